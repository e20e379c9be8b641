"""A model name on the endpoint as kserve's Model; the version behind it can change while it serves.

Every answered inference, whichever route it came by (the HTTP fast path, kserve's own route, gRPC),
is handed to the payload logger here as the arrays it was computed from, under the response's id:
the request's own `id`, else a new one. The logger only queues it; its JSON is made on its thread.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

from kserve import Model
from kserve.errors import InvalidInput as KServeInvalidInput
from kserve.errors import ModelNotReady
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

from issueops.errors import InvalidInput
from issueops.serving.model import LoadedVersion

if TYPE_CHECKING:
    from issueops.monitoring.payload_logger import PayloadLogger


class ServedModel(Model):
    """A model name on the endpoint; the version behind it can change while it serves."""

    def __init__(self, name: str, payload_log: PayloadLogger | None = None):
        super().__init__(name)
        self.current: LoadedVersion | None = None
        self.ready = False
        self.payload_log = payload_log if payload_log is not None and payload_log.enabled else None

    def swap(self, loaded: LoadedVersion) -> LoadedVersion | None:
        previous, self.current = self.current, loaded
        self.ready = True
        return previous

    def load(self) -> bool:  # kserve calls this for a model that is not ready; versions come from swap
        return self.ready

    def get_input_types(self) -> list[dict]:
        return [vars(t).copy() for t in self.current.inputs] if self.current else []

    def get_output_types(self) -> list[dict]:
        return [vars(t).copy() for t in self.current.outputs] if self.current else []

    async def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        loaded = self.current
        if loaded is None:
            raise ModelNotReady(self.name, "No version is loaded yet.")
        if not isinstance(payload, InferRequest):
            raise KServeInvalidInput("This endpoint speaks the Open Inference Protocol (V2) only.")
        try:
            feeds, rows = loaded.decode(payload)
        except InvalidInput as exc:
            raise KServeInvalidInput(str(exc)) from None
        results = await loaded.batcher.submit(feeds, rows)
        response_id = payload.id or str(uuid.uuid4())
        if self.payload_log is not None:
            self.payload_log.log_tensors(
                self.name,
                loaded.version,
                feeds,
                {spec.name: array for spec, array in zip(loaded.outputs, results, strict=True)},
                request_id=response_id,
            )
        outputs = []
        for spec, array in zip(loaded.outputs, results, strict=True):
            output = InferOutput(spec.name, list(array.shape), spec.datatype)
            output.set_data_from_numpy(array, binary_data=True)  # REST re-encodes as JSON unless asked not to
            outputs.append(output)
        return InferResponse(
            response_id=response_id,
            model_name=self.name,
            model_version=str(loaded.version),
            infer_outputs=outputs,
            use_binary_outputs=payload.use_binary_outputs,
            requested_outputs=payload.request_outputs,
        )
