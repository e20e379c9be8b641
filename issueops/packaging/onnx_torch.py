"""ONNX export of torch models: the MLP and autoencoder heads with their preprocessing, and the greedy
policy of an RL model, checked on observations sampled from its environment.
"""

from __future__ import annotations

import copy
import io
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from issueops.errors import Unavailable
from issueops.packaging.onnx_parity import (
    _OUTPUTS,
    IR_VERSION,
    NUMERIC_INPUT,
    OPSET,
    TIE_DECIMALS,
    ParityError,
    ParityReport,
    _max_diff,
    _opsets,
)

POLICY_SAMPLES = 256


def policy_graph(model_dir: Path, manifest: dict[str, Any]):
    """The RL trainer's exported greedy policy, checked against the RLlib checkpoint it came from
    on observations sampled from the environment: actions identical (within 1e-4 when continuous),
    scores within 1e-4."""
    import gymnasium as gym
    import onnx
    import onnxruntime as ort
    import torch

    from issueops.training.reinforcement.ray import greedy_policy_module

    model = onnx.load(str(model_dir / manifest["file"]))
    onnx.checker.check_model(model)
    env = gym.make(manifest["environment"])
    env.observation_space.seed(0)
    observations = np.stack([env.observation_space.sample() for _ in range(POLICY_SAMPLES)]).astype(
        np.float32
    )
    info = {"action_kind": manifest["action_kind"]}
    if hasattr(env.action_space, "low"):
        info.update(action_low=env.action_space.low.tolist(), action_high=env.action_space.high.tolist())
    env.close()
    try:
        from ray.rllib.core.rl_module.rl_module import RLModule

        module = RLModule.from_checkpoint(str((model_dir / manifest["rl_module"]).resolve()))
    except ImportError:
        raise Unavailable("Checking an RL policy against its checkpoint needs ray[rllib].") from None
    except Exception as exc:  # noqa: BLE001 - RLlib raises many kinds; the checkpoint is unusable
        raise ParityError(
            f"The RLlib checkpoint of {manifest.get('algorithm')} cannot be loaded: {exc}"
        ) from None
    policy = greedy_policy_module(module, info, dqn=manifest.get("rllib_algorithm") == "DQN")
    with torch.no_grad():
        expected = [t.numpy() for t in policy(torch.from_numpy(observations))]
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    action, scores = session.run(["action", "scores"], {session.get_inputs()[0].name: observations})
    discrete = manifest["action_kind"] == "discrete"
    return model, ParityReport(
        rows=POLICY_SAMPLES,
        max_abs_diff={"scores": _max_diff(scores, expected[1].astype(np.float64))}
        | ({} if discrete else {"action": _max_diff(action, expected[0].astype(np.float64))}),
        labels_identical=bool(np.array_equal(action, expected[0])) if discrete else None,
    )


def _torch_graph(estimator, preprocess, n_inputs: int, mode: str):
    """torch.onnx export of the MLP or autoencoder, with the numeric preprocessing as tensor ops
    when given. With preprocessing the graph reads `input` (FP32); without, the `features` matrix.
    """
    import onnx
    import torch

    head = _torch_head_class()(estimator, preprocess, mode)
    input_name = NUMERIC_INPUT if preprocess is not None else "features"
    outputs = _OUTPUTS[mode]
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            head,
            (torch.zeros(2, n_inputs),),
            buffer,
            dynamo=False,  # the TorchScript exporter needs no onnxscript and gives a plain graph
            input_names=[input_name],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [input_name, *outputs]},
            opset_version=OPSET[""],
        )
    model = onnx.load_from_string(buffer.getvalue())
    return onnx.helper.make_model(model.graph, opset_imports=_opsets(model), ir_version=IR_VERSION)


@cache
def _torch_head_class():
    import torch
    from torch import nn

    class TorchServingHead(nn.Module):
        """Imputation and scaling (optional), the network, then label and probabilities."""

        def __init__(self, estimator, preprocess, mode: str):
            super().__init__()
            # The autoencoder maps features to (cluster, latent) itself; the MLP gets a head here.
            net = estimator.to_torch() if mode == "cluster" else estimator.module_
            self.net = copy.deepcopy(net).eval()
            self.mode = mode
            self.preprocess = preprocess is not None
            if self.preprocess:
                numeric = preprocess.named_transformers_["numeric"]
                imputer, scaler = numeric.named_steps["impute"], numeric.named_steps["scale"]
                if np.isnan(imputer.statistics_).any():
                    raise ParityError(
                        "A numeric feature had no values in the training split; it cannot be exported."
                    )
                n = len(imputer.statistics_)
                mean = scaler.mean_ if scaler.with_mean else np.zeros(n)
                scale = scaler.scale_ if scaler.with_std else np.ones(n)
                self.register_buffer("median", torch.tensor(imputer.statistics_, dtype=torch.float32))
                self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
                self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
            if mode == "classify":
                classes = np.asarray(estimator.classes_, dtype=np.int64)
                self.register_buffer("classes", torch.tensor(classes))
            elif mode == "regress":
                self.y_mean, self.y_std = float(estimator.y_mean_), float(estimator.y_std_)

        def forward(self, x):
            if self.preprocess:
                x = torch.where(torch.isnan(x), self.median, x)
                x = (x - self.mean) / self.scale
            out = self.net(x)
            if self.mode == "cluster":
                return out
            if self.mode == "regress":
                return out * self.y_std + self.y_mean
            probabilities = torch.softmax(out, dim=1)
            position = torch.argmax(torch.round(probabilities * 10.0**TIE_DECIMALS), dim=1)
            return self.classes[position], probabilities

    return TorchServingHead
