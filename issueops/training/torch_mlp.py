"""A PyTorch multilayer perceptron behind scikit-learn's estimator interface.

Being an sklearn estimator lets it sit in the same Pipeline as the preprocessing, so the
model and its preprocessing are saved, loaded and exported together like every other model.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from torch import nn


def build_mlp(n_in: int, hidden: list[int], n_out: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(n_in, width), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        n_in = width
    layers.append(nn.Linear(n_in, n_out))
    return nn.Sequential(*layers)


class _TorchMLP(BaseEstimator):
    def __init__(
        self,
        hidden_units=(64, 32),
        epochs=100,
        learning_rate=1e-3,
        batch_size=32,
        dropout=0.0,
        weight_decay=0.0,
        random_state=42,
    ):
        self.hidden_units = hidden_units
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.random_state = random_state

    def _n_outputs(self, y: np.ndarray) -> int:
        raise NotImplementedError

    def _loss(self) -> nn.Module:
        raise NotImplementedError

    def _target(self, y: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def fit(self, X, y, X_val=None, y_val=None):
        """Adam on mini-batches; keeps the weights of the epoch with the best validation loss."""
        torch.manual_seed(self.random_state)
        generator = torch.Generator().manual_seed(self.random_state)
        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        n_outputs = self._n_outputs(np.asarray(y))
        target = self._target(np.asarray(y))
        self.n_features_in_ = X.shape[1]
        self.module_ = build_mlp(X.shape[1], list(self.hidden_units), n_outputs, self.dropout)
        optimizer = torch.optim.Adam(
            self.module_.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )
        loss_fn = self._loss()
        has_val = X_val is not None and len(X_val)
        if has_val:
            X_val = torch.as_tensor(np.asarray(X_val, dtype=np.float32))
            val_target = self._target(np.asarray(y_val))
        best, best_state = float("inf"), None
        self.loss_curve_ = []
        for _ in range(self.epochs):
            self.module_.train()
            order = torch.randperm(len(X), generator=generator)
            total = 0.0
            for start in range(0, len(X), self.batch_size):
                batch = order[start : start + self.batch_size]
                optimizer.zero_grad()
                loss = loss_fn(self.module_(X[batch]), target[batch])
                loss.backward()
                optimizer.step()
                total += loss.item() * len(batch)
            self.loss_curve_.append(total / len(X))
            if has_val:
                self.module_.eval()
                with torch.no_grad():
                    val_loss = float(loss_fn(self.module_(X_val), val_target))
                if val_loss < best:
                    best = val_loss
                    best_state = {k: v.clone() for k, v in self.module_.state_dict().items()}
        if best_state is not None:
            self.module_.load_state_dict(best_state)
        self.module_.eval()
        return self

    def _forward(self, X) -> np.ndarray:
        with torch.no_grad():
            return self.module_(torch.as_tensor(np.asarray(X, dtype=np.float32))).numpy()


class TorchMLPClassifier(ClassifierMixin, _TorchMLP):
    def _n_outputs(self, y):
        self.classes_ = np.unique(y)
        return len(self.classes_)

    def _loss(self):
        return nn.CrossEntropyLoss()

    def _target(self, y):
        return torch.as_tensor(np.searchsorted(self.classes_, y), dtype=torch.long)

    def predict_proba(self, X) -> np.ndarray:
        logits = torch.as_tensor(self._forward(X))
        return torch.softmax(logits, dim=1).numpy()

    def predict(self, X) -> np.ndarray:
        return self.classes_[np.argmax(self._forward(X), axis=1)]


class TorchMLPRegressor(RegressorMixin, _TorchMLP):
    def _n_outputs(self, y):
        return 1

    def _loss(self):
        return nn.MSELoss()

    def _target(self, y):
        return torch.as_tensor(y, dtype=torch.float32).reshape(-1, 1)

    def fit(self, X, y, X_val=None, y_val=None):
        # Scale the target so one learning rate suits targets of any magnitude.
        y = np.asarray(y, dtype=np.float64)
        self.y_mean_, self.y_std_ = float(y.mean()), float(y.std() or 1.0)
        scaled_val = None if y_val is None else (np.asarray(y_val) - self.y_mean_) / self.y_std_
        return super().fit(X, (y - self.y_mean_) / self.y_std_, X_val, scaled_val)

    def predict(self, X) -> np.ndarray:
        return self._forward(X).reshape(-1) * self.y_std_ + self.y_mean_
