// The front's check of an inference request (KServe v2 / Open Inference Protocol, HTTP and
// gRPC), run by nginx's JavaScript module (njs) before Triton sees a byte of it.
// server/front.py says why: Triton 2.51 sizes a JSON tensor from its "shape" and allocates it
// before comparing it with the data, so a 100-byte HTTP request naming a shape of
// 2^20 x 3 x 256 x 256 aborts the whole server (CWE-789); and a 60 MB gRPC request naming
// three million inputs grows it by 2 GiB (NVIDIA bulletin 5816, many inputs and outputs).
// Here the request's structure -- the HTTP request's JSON (the whole body, or its first
// Inference-Header-Content-Length bytes with the binary tensor extension), or the gRPC
// ModelInferRequest's fields (protobuf wire format, tensor bytes skipped) -- is read from
// nginx's buffer file and held to the protocol and to this server's bounds; what passes is
// proxied to Triton unchanged (a subrequest that sends the original body from that file).
//
// The bounds come from nginx.conf (js_var, written by server/front.py from
// contract.security): $infer_max_tensors, $infer_max_dims, $infer_max_json_bytes,
// $infer_max_header_bytes.  A refused HTTP request gets 400, a gRPC call INVALID_ARGUMENT,
// each with one line naming the problem.

import fs from 'fs';

const DATATYPES = ['BOOL', 'UINT8', 'UINT16', 'UINT32', 'UINT64', 'INT8', 'INT16', 'INT32', 'INT64',
                   'FP16', 'FP32', 'FP64', 'BF16', 'BYTES'];
// The parameters the protocol and Triton's binary and classification extensions define, with
// the type each must have; anything else is refused rather than handed to Triton's parser.
const REQUEST_PARAMETERS = {binary_data_output: 'boolean', timeout: 'count', priority: 'count'};
const INPUT_PARAMETERS = {binary_data_size: 'count'};
const OUTPUT_PARAMETERS = {binary_data: 'boolean', classification: 'count'};
const MAX_COUNT = 2147483647;  // parameters Triton reads into 32-bit fields
// Names as Triton's configs write them, and printable ids: Triton repeats both in its errors,
// which must stay one line.
const NAME = /^[A-Za-z0-9_.\-]{1,256}$/;
const ID = /^[\x20-\x7e]{0,256}$/;
const VERSION = /^[0-9]{0,19}$/;

// A value of the client's, as an error may show it: quoted, control characters escaped, short.
function shown(value) {
    return JSON.stringify(String(value).slice(0, 40));
}

function isCount(v) {
    return typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= MAX_COUNT;
}

function checkParameters(params, allowed, where) {
    if (params === undefined) {
        return null;
    }
    if (params === null || typeof params !== 'object' || Array.isArray(params)) {
        return `${where}: "parameters" must be an object`;
    }
    const keys = Object.keys(params);
    for (let k = 0; k < keys.length; k++) {
        const key = keys[k];
        const kind = allowed[key];
        if (kind === undefined) {
            return `${where}: parameter ${shown(key)} is not one this server accepts (${Object.keys(allowed).join(', ')})`;
        }
        const value = params[key];
        if (kind === 'boolean' ? typeof value !== 'boolean' : !isCount(value)) {
            return `${where}: parameter "${key}" must be ${kind === 'boolean' ? 'true or false' : 'an integer from 0 to ' + MAX_COUNT}`;
        }
    }
    return null;
}

function checkKeys(object, allowed, where) {
    if (object === null || typeof object !== 'object' || Array.isArray(object)) {
        return `${where} must be a JSON object`;
    }
    const keys = Object.keys(object);
    for (let k = 0; k < keys.length; k++) {
        const key = keys[k];
        if (allowed.indexOf(key) < 0) {
            return `${where}: unknown field ${shown(key)}`;
        }
    }
    return null;
}

// Scalars in a JSON tensor's "data" (nested arrays flattened); -1 when it is not an array of
// scalars.  Iterative, so a deeply nested array cannot exhaust the stack.
function scalarCount(data, limit) {
    let count = 0;
    const stack = [data];
    while (stack.length) {
        const item = stack.pop();
        if (Array.isArray(item)) {
            for (let i = 0; i < item.length; i++) {
                stack.push(item[i]);
            }
        } else if (item !== null && typeof item === 'object') {
            return -1;
        } else if (++count > limit) {
            return count;
        }
    }
    return count;
}

// Why the request ``head`` (parsed JSON) is refused, or null; ``bodyBytes``: the whole body's size.
function problem(head, bodyBytes, limits) {
    let why = checkKeys(head, ['id', 'parameters', 'inputs', 'outputs'], 'the request');
    if (why) {
        return why;
    }
    if (head.id !== undefined && (typeof head.id !== 'string' || !ID.test(head.id))) {
        return 'the request: "id" must be at most 256 printable ASCII characters';
    }
    why = checkParameters(head.parameters, REQUEST_PARAMETERS, 'the request');
    if (why) {
        return why;
    }
    if (!Array.isArray(head.inputs) || head.inputs.length === 0) {
        return 'the request needs "inputs", a non-empty array';
    }
    const outputs = head.outputs === undefined ? [] : head.outputs;
    if (!Array.isArray(outputs)) {
        return 'the request: "outputs" must be an array';
    }
    if (head.inputs.length > limits.tensors || outputs.length > limits.tensors) {
        return `the request names ${head.inputs.length} inputs and ${outputs.length} outputs; at most ${limits.tensors} of each`;
    }
    for (let i = 0; i < head.inputs.length; i++) {
        const input = head.inputs[i];
        const where = `input ${i}`;
        why = checkKeys(input, ['name', 'shape', 'datatype', 'parameters', 'data'], where);
        if (why) {
            return why;
        }
        if (typeof input.name !== 'string' || !NAME.test(input.name)) {
            return `${where}: "name" must be 1 to 256 of A-Z a-z 0-9 _ . -`;
        }
        if (DATATYPES.indexOf(input.datatype) < 0) {
            return `${where} (${input.name}): "datatype" must be one of ${DATATYPES.join(', ')}`;
        }
        if (!Array.isArray(input.shape) || input.shape.length > limits.dims) {
            return `${where} (${input.name}): "shape" must be an array of at most ${limits.dims} dimensions`;
        }
        // A tensor cannot hold more elements than the request has bytes: every element takes at
        // least one byte of JSON or of binary data.  This also keeps every product exact.
        let elements = 1;
        for (let k = 0; k < input.shape.length; k++) {
            const d = input.shape[k];
            if (typeof d !== 'number' || !Number.isInteger(d) || d < 0) {
                return `${where} (${input.name}): shape ${JSON.stringify(input.shape).slice(0, 80)} has a dimension that is not a non-negative integer`;
            }
            elements *= d;
            if (elements > bodyBytes) {
                return `${where} (${input.name}): shape ${JSON.stringify(input.shape).slice(0, 80)} holds more elements than the request has bytes (${bodyBytes})`;
            }
        }
        why = checkParameters(input.parameters, INPUT_PARAMETERS, `${where} (${input.name})`);
        if (why) {
            return why;
        }
        const binary = input.parameters !== undefined && input.parameters.binary_data_size !== undefined;
        if (binary === (input.data !== undefined)) {
            return `${where} (${input.name}): needs exactly one of "data" or the "binary_data_size" parameter`;
        }
        if (binary && input.parameters.binary_data_size > bodyBytes) {
            return `${where} (${input.name}): binary_data_size ${input.parameters.binary_data_size} is larger than the request (${bodyBytes} bytes)`;
        }
        if (!binary) {
            const found = scalarCount(input.data, elements);
            if (found !== elements) {
                return `${where} (${input.name}): shape ${JSON.stringify(input.shape).slice(0, 80)} holds ${elements} elements, "data" has ${found < 0 ? 'a value that is not a number, string or boolean' : (found > elements ? 'more' : found)}`;
            }
        }
    }
    for (let i = 0; i < outputs.length; i++) {
        const output = outputs[i];
        why = checkKeys(output, ['name', 'parameters'], `output ${i}`);
        if (why) {
            return why;
        }
        if (typeof output.name !== 'string' || !NAME.test(output.name)) {
            return `output ${i}: "name" must be 1 to 256 of A-Z a-z 0-9 _ . -`;
        }
        why = checkParameters(output.parameters, OUTPUT_PARAMETERS, `output ${i} (${output.name})`);
        if (why) {
            return why;
        }
    }
    return null;
}

function limitsOf(r) {
    return {tensors: Number(r.variables.infer_max_tensors), dims: Number(r.variables.infer_max_dims),
            json: Number(r.variables.infer_max_json_bytes), header: Number(r.variables.infer_max_header_bytes)};
}

// The request's JSON part as text, or {refusal}.  nginx keeps every inference body in a file
// (client_body_in_file_only), so only the JSON part is ever read into this VM, and the body's
// size is the file's (a chunked request has no Content-Length).
function jsonPart(r, limits) {
    const file = r.variables.request_body_file;
    if (!file) {
        return {refusal: 'the request has no body'};
    }
    const fd = fs.openSync(file, 'r');
    try {
        const bodyBytes = fs.fstatSync(fd).size;
        const declared = r.headersIn['Inference-Header-Content-Length'];
        let length = bodyBytes;
        if (declared !== undefined) {
            if (!/^[0-9]{1,9}$/.test(declared) || Number(declared) === 0 || Number(declared) > bodyBytes) {
                return {refusal: `Inference-Header-Content-Length must be a number from 1 to the body's length (${bodyBytes})`};
            }
            length = Number(declared);
            if (length > limits.header) {
                return {refusal: `the JSON inference header is ${length} bytes; at most ${limits.header} (send tensor data as binary)`};
            }
        } else if (bodyBytes > limits.json) {
            return {refusal: `a request with its tensors in JSON may have at most ${limits.json} bytes; send larger tensors with the binary tensor extension`};
        }
        const buffer = Buffer.alloc(length);
        const got = fs.readSync(fd, buffer, 0, length, 0);
        return {text: buffer.toString('utf8', 0, got), bodyBytes: bodyBytes};
    } finally {
        fs.closeSync(fd);
    }
}

function refuse(r, status, message) {
    r.headersOut['Content-Type'] = 'application/json';
    r.return(status, JSON.stringify({error: message}));
}

async function infer(r) {
    const limits = limitsOf(r);
    const part = jsonPart(r, limits);
    if (part.refusal) {
        return refuse(r, 400, part.refusal);
    }
    let head;
    try {
        head = JSON.parse(part.text);
    } catch (e) {
        return refuse(r, 400, 'the request\'s JSON does not parse');
    }
    const why = problem(head, part.bodyBytes, limits);
    if (why) {
        return refuse(r, 400, why);
    }
    // The original body (nginx's buffer file) goes to Triton as it came.
    const reply = await r.subrequest('/_triton' + r.uri, {method: 'POST'});
    const passed = ['Content-Type', 'Inference-Header-Content-Length'];
    for (let k = 0; k < passed.length; k++) {
        const name = passed[k];
        if (reply.headersOut[name] !== undefined) {
            r.headersOut[name] = reply.headersOut[name];
        }
    }
    r.return(reply.status, reply.responseBuffer);
}

// --- gRPC: inference.GRPCInferenceService/ModelInfer ------------------------------------------------

// A reader of protobuf's wire format over nginx's buffer file: varints and field headers are
// read; length-delimited fields are entered or skipped by position, never copied whole.
function Reader(fd, start, end) {
    this.fd = fd;
    this.pos = start;
    this.end = end;
    this.buffer = Buffer.alloc(65536);
    this.bufferStart = 0;
    this.bufferEnd = 0;
}

Reader.prototype.byte = function () {
    if (this.pos >= this.end) {
        throw new Error('truncated message');
    }
    if (this.pos < this.bufferStart || this.pos >= this.bufferEnd) {
        const got = fs.readSync(this.fd, this.buffer, 0, this.buffer.length, this.pos);
        this.bufferStart = this.pos;
        this.bufferEnd = this.pos + got;
    }
    return this.buffer[this.pos++ - this.bufferStart];
};

// A varint as a Number: exact below 2^53; larger ones (negative int64 among them) come out at
// 2^53 or more, which every bound below refuses.
Reader.prototype.varint = function () {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
        const b = this.byte();
        value += (b & 0x7f) * scale;
        if (b < 0x80) {
            return value;
        }
        scale *= 128;
    }
    throw new Error('malformed varint');
};

Reader.prototype.bytes = function (length) {
    const out = Buffer.alloc(length);
    for (let i = 0; i < length; i++) {
        out[i] = this.byte();
    }
    return out;
};

// Each field of the message ending at ``end``: fn(number, wireType, reader, fieldEnd) for
// length-delimited fields (reader at the field's start), fn(number, wireType, value) else.
function fields(reader, end, fn) {
    while (reader.pos < end) {
        const key = reader.varint();
        const number = Math.floor(key / 8);
        const wire = key % 8;
        if (wire === 0) {
            fn(number, wire, reader.varint());
        } else if (wire === 2) {
            const length = reader.varint();
            const fieldEnd = reader.pos + length;
            if (fieldEnd > end) {
                throw new Error('a field runs past the message');
            }
            fn(number, wire, reader, fieldEnd);
            reader.pos = fieldEnd;
        } else if (wire === 1 || wire === 5) {
            reader.pos += wire === 1 ? 8 : 4;
        } else {
            throw new Error('an unsupported wire type');
        }
    }
    if (reader.pos !== end) {
        throw new Error('a field runs past the message');
    }
}

function text(reader, end, limit, what) {
    if (end - reader.pos > limit) {
        throw new Error(`${what} is longer than ${limit} bytes`);
    }
    return reader.bytes(end - reader.pos).toString('utf8');
}

// map<string, InferParameter>: checked against ``allowed`` as the HTTP parameters are.
const GRPC_PARAMETER_KINDS = {1: 'boolean', 2: 'count', 3: 'string', 4: 'number', 5: 'count'};
function grpcParameter(reader, end, allowed, where) {
    let key = null;
    let kind = null;
    let value = null;
    fields(reader, end, function (number, wire, v, fieldEnd) {
        if (number === 1 && wire === 2) {
            key = text(v, fieldEnd, 256, 'a parameter name');
        } else if (number === 2 && wire === 2) {
            fields(v, fieldEnd, function (n, w, x) {
                kind = GRPC_PARAMETER_KINDS[n] || 'unknown';
                value = w === 0 ? x : null;
            });
        }
    });
    if (key === null || allowed[key] === undefined) {
        return `${where}: parameter ${shown(key)} is not one this server accepts (${Object.keys(allowed).join(', ') || 'none'})`;
    }
    if (allowed[key] === 'count' ? !(kind === 'count' && isCount(value)) : kind !== allowed[key]) {
        return `${where}: parameter "${key}" must be ${allowed[key] === 'count' ? 'an integer from 0 to ' + MAX_COUNT : allowed[key]}`;
    }
    return null;
}

const GRPC_REQUEST_PARAMETERS = {timeout: 'count', priority: 'count'};
const GRPC_INPUT_PARAMETERS = {};
const GRPC_OUTPUT_PARAMETERS = {classification: 'count'};

// Why a ModelInferRequest (at reader.pos .. end) is refused, or null.
function grpcProblem(reader, end, limits) {
    const messageBytes = end - reader.pos;
    let inputs = 0;
    let outputs = 0;
    let raw = 0;
    let why = null;
    fields(reader, end, function (number, wire, v, fieldEnd) {
        if (why) {
            return;
        }
        if (wire !== 2) {
            why = `field ${number} of the request has the wrong wire type`;
        } else if (number === 1 || number === 2 || number === 3) {
            const value = text(v, fieldEnd, 256, 'the model name, version or request id');
            if (!(number === 1 ? NAME : number === 2 ? VERSION : ID).test(value)) {
                why = number === 1 ? 'the model name must be 1 to 256 of A-Z a-z 0-9 _ . -'
                    : number === 2 ? 'the model version must be a number' : 'the request id must be at most 256 printable ASCII characters';
            }
        } else if (number === 4) {
            why = grpcParameter(v, fieldEnd, GRPC_REQUEST_PARAMETERS, 'the request');
        } else if (number === 5) {
            if (++inputs > limits.tensors) {
                why = `the request names more than ${limits.tensors} inputs`;
                return;
            }
            const where = `input ${inputs - 1}`;
            let dims = 0;
            let elements = 1;
            fields(v, fieldEnd, function (n, w, x, xEnd) {
                if (why) {
                    return;
                }
                if (n === 1 && !NAME.test(text(x, xEnd, 256, 'a tensor name'))) {
                    why = `${where}: the name must be 1 to 256 of A-Z a-z 0-9 _ . -`;
                } else if (n === 2 && DATATYPES.indexOf(text(x, xEnd, 16, 'a datatype')) < 0) {
                    why = `${where}: the datatype must be one of ${DATATYPES.join(', ')}`;
                } else if (n === 3) {
                    // shape: packed (wire 2) or one varint per dimension (wire 0)
                    const take = function (d) {
                        dims++;
                        elements *= d;
                        if (dims > limits.dims) {
                            why = `${where}: "shape" must have at most ${limits.dims} dimensions`;
                        } else if (d >= 9007199254740992) {
                            why = `${where}: shape has a dimension that is not a non-negative integer below 2^53`;
                        } else if (elements > messageBytes) {
                            why = `${where}: shape holds more elements than the request has bytes (${messageBytes})`;
                        }
                    };
                    if (w === 0) {
                        take(x);
                    } else {
                        while (x.pos < xEnd && !why) {
                            take(x.varint());
                        }
                    }
                } else if (n === 4) {
                    why = grpcParameter(x, xEnd, GRPC_INPUT_PARAMETERS, where);
                }
            });
        } else if (number === 6) {
            if (++outputs > limits.tensors) {
                why = `the request names more than ${limits.tensors} outputs`;
                return;
            }
            fields(v, fieldEnd, function (n, w, x, xEnd) {
                if (why) {
                    return;
                }
                if (n === 1 && !NAME.test(text(x, xEnd, 256, 'an output name'))) {
                    why = `output ${outputs - 1}: the name must be 1 to 256 of A-Z a-z 0-9 _ . -`;
                } else if (n === 2) {
                    why = grpcParameter(x, xEnd, GRPC_OUTPUT_PARAMETERS, `output ${outputs - 1}`);
                }
            });
        } else if (number === 7) {
            raw++;
        }
    });
    if (why) {
        return why;
    }
    if (inputs === 0) {
        return 'the request names no inputs';
    }
    if (raw > inputs) {
        return `the request has ${raw} raw_input_contents for ${inputs} inputs`;
    }
    return null;
}

function grpcRefuse(r, code, message) {
    // Trailers-Only: the status in the headers of an empty answer (as the front's other refusals).
    r.headersOut['Content-Type'] = 'application/grpc';
    r.headersOut['grpc-status'] = String(code);
    r.headersOut['grpc-message'] = message;
    r.return(204);
}

async function grpcInfer(r) {
    const limits = limitsOf(r);
    const file = r.variables.request_body_file;
    if (!file) {
        return grpcRefuse(r, 3, 'the request has no message');
    }
    let why;
    const fd = fs.openSync(file, 'r');
    try {
        const size = fs.fstatSync(fd).size;
        const reader = new Reader(fd, 0, size);
        // gRPC's framing: a compressed-flag byte and a 4-byte length, then one message (unary call).
        const flag = reader.byte();
        const length = reader.bytes(4).readUInt32BE(0);
        if (flag !== 0) {
            return grpcRefuse(r, 12, 'compressed messages are not accepted: send them uncompressed (grpc-encoding identity)');
        }
        if (length !== size - 5) {
            return grpcRefuse(r, 3, 'the body is not one gRPC message');
        }
        try {
            why = grpcProblem(reader, size, limits);
        } catch (e) {
            why = `the request does not parse as a ModelInferRequest: ${e.message}`;
        }
    } finally {
        fs.closeSync(fd);
    }
    if (why) {
        return grpcRefuse(r, 3, why);
    }
    const reply = await r.subrequest('/_triton_grpc' + r.uri, {method: 'POST'});
    const status = reply.headersOut['grpc-status'];
    if (status !== undefined || reply.status !== 200) {
        // Triton's own refusal (Trailers-Only), or Triton unreachable.
        return status !== undefined ? grpcRefuse(r, Number(status), reply.headersOut['grpc-message'] || '')
                                    : grpcRefuse(r, 14, 'the model server is not available right now; retry');
    }
    r.headersOut['Content-Type'] = 'application/grpc';
    r.variables.grpc_status_out = '0';  // sent as the trailer (add_trailer in nginx.conf)
    r.return(200, reply.responseBuffer);
}

export default {infer, grpcInfer, problem};
