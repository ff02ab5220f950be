"""Errors a user can cause by handing us a model: each is a one-line message, never a traceback."""


class ModelError(Exception):
    """The ONNX file cannot be used: missing, corrupt, wrong shape, or unsupported content."""


class UnsupportedOpError(ModelError):
    """An ONNX op or attribute that nlverify cannot bound soundly; the message names op and node."""

    def __init__(self, op_type: str, node_name: str, detail: str = "") -> None:
        where = f"node '{node_name}'" if node_name else "an unnamed node"
        message = f"unsupported ONNX op {op_type} at {where}"
        super().__init__(f"{message}: {detail}" if detail else message)
        self.op_type = op_type
        self.node_name = node_name
