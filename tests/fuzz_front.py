"""Generated requests against the front: Schemathesis over HTTP, Hypothesis over gRPC.

- HTTP: Schemathesis generates requests from tests/data/open_inference_rest.front.yaml (the Open
  Inference Protocol's REST spec trimmed to exactly the routes the front serves), valid ones
  and invalid ones (its positive and negative modes), for every operation; the path's model
  name is often one the server has, so the requests reach the models and the check before them.
- gRPC: Hypothesis builds ModelInferRequest messages field by field from the v2 proto's own
  descriptor (tritonclient's service_pb2), and mutates the bytes of a valid one.

Every answer must be documented: a status the spec lists for the route (HTTP) or one of
GRPC_ANSWERS, and, for a refusal, one line naming the problem with no internal names.  The
counts of each kind of answer are what ``Tally`` keeps (docs/RESULTS.md has a long run's).
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from hypothesis import strategies as st

from tests import attacks, bulletins

SPEC = Path(__file__).parent / "data" / "open_inference_rest.front.yaml"
MODELS = ("classify", "alexnet", "preprocess")
# The gRPC statuses the front documents: OK, INVALID_ARGUMENT (a refused request or image),
# NOT_FOUND (an unknown model), RESOURCE_EXHAUSTED (over the body cap), UNIMPLEMENTED (a
# compressed message), UNAVAILABLE (a full queue: retry), UNAUTHENTICATED.
GRPC_ANSWERS = {"0": "OK", "3": "INVALID_ARGUMENT", "5": "NOT_FOUND", "8": "RESOURCE_EXHAUSTED", "12": "UNIMPLEMENTED", "14": "UNAVAILABLE", "16": "UNAUTHENTICATED"}


@dataclass
class Tally:
    """How many cases of each kind were sent and how each was answered, and what broke a rule."""

    cases: collections.Counter = field(default_factory=collections.Counter)  # by kind of case
    answers: collections.Counter = field(default_factory=collections.Counter)  # by (protocol, status)
    failures: list[str] = field(default_factory=list)

    def check(self, kind: str, protocol: str, status: str, message: str, documented: set[str], repro: str, sent: str = "") -> None:
        """Count the answer; note it if its status is undocumented, or a refusal is not one line or
        names something internal (a word of ``attacks.LEAKS`` the client did not send itself:
        Triton repeats an unknown model's name, which may well end in .py)."""
        self.cases[kind] += 1
        self.answers[f"{protocol} {status}"] += 1
        problems = []
        if status not in documented:
            problems.append(f"status {status} is not documented ({sorted(documented)})")
        refused = status not in ("200", "0")
        if refused and (not message or "\n" in message):
            problems.append(f"the refusal is not one line: {message[:200]!r}")
        leaked = [word for word in attacks.LEAKS if word in message and word not in sent]
        if refused and leaked:
            problems.append(f"the answer names {leaked}: {message[:200]}")
        if problems and len(self.failures) < 50:
            self.failures.append(f"{kind}: {'; '.join(problems)} -- {repro[:400]}")

    def as_dict(self) -> dict:
        return {"cases": sum(self.cases.values()), "by_kind": dict(self.cases), "answers": dict(sorted(self.answers.items())), "failures": self.failures}


_RUN = settings(deadline=None, database=None, derandomize=False, phases=[Phase.generate], suppress_health_check=list(HealthCheck), print_blob=False)


# --- HTTP: Schemathesis ------------------------------------------------------------------------------------


def fuzz_http(base_url: str, token: str, examples: int, tally: Tally) -> None:
    """``examples`` cases per operation and generation mode (positive, negative)."""
    import schemathesis
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_path(SPEC)
    auth = {"Authorization": f"Bearer {token}"}
    for result in schema.get_all_operations():
        operation = result.ok()
        documented = {str(code) for code in operation.definition.raw["responses"]}
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            strategy = operation.as_strategy(generation_mode=mode)

            @settings(_RUN, max_examples=examples)
            @given(data=st.data())
            def run(data) -> None:
                case = data.draw(strategy)
                if "model_name" in (case.path_parameters or {}):
                    case.path_parameters["model_name"] = data.draw(st.sampled_from([*MODELS, case.path_parameters["model_name"]]))
                if "model_version" in (case.path_parameters or {}):
                    case.path_parameters["model_version"] = data.draw(st.sampled_from(["1", case.path_parameters["model_version"]]))
                try:
                    response = case.call(base_url=base_url, headers=auth, timeout=60)
                except Exception as exc:  # noqa: BLE001 - a request requests cannot even send (a header it refuses) is not the server's answer
                    if type(exc).__name__ in ("InvalidHeader", "InvalidURL", "UnicodeEncodeError", "LocationParseError"):
                        return
                    raise
                message = response.text
                try:
                    message = json.loads(message).get("error", message) if response.status_code >= 400 else ""
                except (ValueError, AttributeError):
                    pass
                sent = f"{case.formatted_path} {case.body!r}"
                tally.check(f"{operation.label} ({mode.value})", "http", str(response.status_code), str(message), documented, case.as_curl_command(), sent)

            try:
                run()
            except Unsatisfiable:  # an operation with nothing to make invalid (GET /v2/health/live) has no negative cases
                if mode == GenerationMode.POSITIVE:
                    raise


# --- gRPC: ModelInferRequest from the proto's descriptor ------------------------------------------------------


def _names() -> st.SearchStrategy[str]:
    return st.one_of(st.sampled_from(["IMAGE_BYTES", "IMAGE", "PROBS", "classify", "alexnet", "BYTES", "UINT8", "FP32", "1", ""]), st.text(max_size=12))


def _field_value(fd, depth: int) -> st.SearchStrategy:
    from google.protobuf.descriptor import FieldDescriptor as F

    if fd.type == F.TYPE_MESSAGE:
        if fd.message_type.GetOptions().map_entry:
            return st.dictionaries(_names(), _field_value(fd.message_type.fields_by_name["value"], depth + 1), max_size=3)
        return message_dicts(fd.message_type, depth + 1)
    ints = {F.TYPE_INT64: (-(2**63), 2**63 - 1), F.TYPE_INT32: (-(2**31), 2**31 - 1), F.TYPE_UINT64: (0, 2**64 - 1), F.TYPE_UINT32: (0, 2**32 - 1)}
    if fd.type in ints:
        low, high = ints[fd.type]
        return st.one_of(st.integers(low, high), st.sampled_from([v for v in (0, 1, 3, 16, 256, 2**31 - 1, -1) if low <= v <= high]))
    if fd.type == F.TYPE_STRING:
        return _names()
    if fd.type == F.TYPE_BYTES:
        image = bulletins.image()
        return st.one_of(st.binary(max_size=64), st.just(len(image).to_bytes(4, "little") + image))
    if fd.type == F.TYPE_BOOL:
        return st.booleans()
    if fd.type in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if fd.type == F.TYPE_FLOAT else 64)
    return st.nothing()


def message_dicts(descriptor, depth: int = 0) -> st.SearchStrategy[dict]:
    """Field values for ``descriptor``, from its own fields (a oneof gets at most one of its members)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    if depth > 4:
        return st.just({})
    parts = {}
    for fd in descriptor.fields:
        value = _field_value(fd, depth)
        if fd.label == F.LABEL_REPEATED and not (fd.type == F.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry):
            value = st.lists(value, max_size=3 if depth else 4)
        parts[fd.name] = value
    oneofs = {fd.name: o.name for o in descriptor.oneofs for fd in o.fields}

    @st.composite
    def build(draw) -> dict:
        chosen: dict = {}
        taken: set[str] = set()
        for name, strategy in parts.items():
            if oneofs.get(name) in taken or not draw(st.booleans()):
                continue
            chosen[name] = draw(strategy)
            if name in oneofs:
                taken.add(oneofs[name])
        return chosen

    return build()


def _message(values: dict, message):
    """Fill ``message`` from ``values`` (nested dicts and lists), as message_dicts drew them."""
    for name, value in values.items():
        fd = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name)
        if fd.type == fd.TYPE_MESSAGE and fd.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if fd.message_type.fields_by_name["value"].type == fd.TYPE_MESSAGE:
                    _message(item, target[key])
                else:
                    target[key] = item
        elif fd.label == fd.LABEL_REPEATED:
            for item in value:
                _message(item, target.add()) if fd.type == fd.TYPE_MESSAGE else target.append(item)
        elif fd.type == fd.TYPE_MESSAGE:
            _message(value, target)
        else:
            setattr(message, name, value)
    return message


def fuzz_grpc(target: bulletins.Target, examples: int, tally: Tally) -> None:
    """``examples`` generated ModelInferRequests and ``examples`` mutated ones, each sent through the front."""
    from tritonclient.grpc import service_pb2

    valid = bulletins.infer_request()

    def send(kind: str, message: bytes) -> None:
        answer = bulletins.grpc_call(target, message)
        tally.check(kind, "grpc", answer.status, answer.message, set(GRPC_ANSWERS), f"grpc ModelInfer {message[:300].hex()}", message.decode("latin-1"))

    @settings(_RUN, max_examples=examples)
    @given(values=message_dicts(service_pb2.ModelInferRequest.DESCRIPTOR), model=st.sampled_from([*MODELS, None]))
    def generated(values: dict, model: str | None) -> None:
        request = _message(values, service_pb2.ModelInferRequest())
        if model is not None:
            request.model_name = model
        send("ModelInfer from the proto", request.SerializeToString())

    @settings(_RUN, max_examples=examples)
    @given(st.lists(st.tuples(st.integers(0, len(valid)), st.integers(0, 8), st.binary(max_size=8)), min_size=1, max_size=6))
    def mutated(edits: list[tuple[int, int, bytes]]) -> None:
        message = bytearray(valid)
        for at, cut, insert in edits:  # replace ``cut`` bytes at ``at`` with ``insert``
            message[at : at + cut] = insert
        send("ModelInfer, a valid one's bytes mutated", bytes(message))

    generated()
    mutated()
