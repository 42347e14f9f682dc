"""Python-backend model code that Triton's stub imports from the project's environment."""
