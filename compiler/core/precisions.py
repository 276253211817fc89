"""The precisions a half can be served in, in one order: from most to least precise."""

PRECISIONS = ("fp32", "fp16", "int8")


def least_precise(*precisions: str) -> str:
    """The least precise of `precisions`: a mixed build is held to its gates and named by it."""
    return max(precisions, key=PRECISIONS.index)
