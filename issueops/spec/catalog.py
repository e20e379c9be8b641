"""What can be trained: learning types, algorithms, their hyperparameters and metrics.

This catalog is the one schema source: spec validation, the CRD's openAPIV3Schema, the
README's algorithm table and operator-comment validation are all derived from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEARNING_TYPES = ("supervised", "unsupervised", "reinforcement")
TASK_TYPES = ("classification", "regression", "clustering", "dimensionality_reduction", "control")


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool = True
    lower_bound: float | None = None
    upper_bound: float | None = None

    def meets(self, value: float, threshold: float) -> bool:
        return value >= threshold if self.higher_is_better else value <= threshold


METRICS: dict[str, Metric] = {
    m.name: m
    for m in (
        Metric("accuracy", True, 0.0, 1.0),
        Metric("precision", True, 0.0, 1.0),
        Metric("recall", True, 0.0, 1.0),
        Metric("f1_score", True, 0.0, 1.0),
        Metric("auc_roc", True, 0.0, 1.0),
        Metric("r2", True, None, 1.0),
        Metric("rmse", False, 0.0, None),
        Metric("mae", False, 0.0, None),
        Metric("mape", False, 0.0, None),
        Metric("silhouette", True, -1.0, 1.0),
        Metric("davies_bouldin", False, 0.0, None),
        Metric("calinski_harabasz", True, 0.0, None),
        Metric("inertia", False, 0.0, None),
        Metric("noise_fraction", False, 0.0, 1.0),
        Metric("explained_variance_ratio", True, 0.0, 1.0),
        Metric("trustworthiness", True, 0.0, 1.0),
        Metric("episode_reward_mean", True, None, None),
        Metric("success_rate", True, 0.0, 1.0),
    )
}

TASK_METRICS: dict[str, tuple[str, ...]] = {
    "classification": ("accuracy", "precision", "recall", "f1_score", "auc_roc"),
    "regression": ("r2", "rmse", "mae", "mape"),
    "clustering": ("silhouette", "davies_bouldin", "calinski_harabasz", "inertia", "noise_fraction"),
    "dimensionality_reduction": ("explained_variance_ratio", "trustworthiness", "silhouette"),
    "control": ("episode_reward_mean", "success_rate"),
}
DEFAULT_METRIC = {
    "classification": "accuracy",
    "regression": "r2",
    "clustering": "silhouette",
    "dimensionality_reduction": "silhouette",
    "control": "episode_reward_mean",
}


@dataclass(frozen=True)
class Param:
    """One hyperparameter: its type, default and allowed range or choices."""

    name: str
    type: str  # int | float | bool | str | int_list
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    nullable: bool = False
    help: str = ""

    def check(self, value: Any) -> str | None:
        """The problem with `value`, as a sentence, or None when it is acceptable."""
        if value is None:
            return None if self.nullable else f"must be {self._kind()}, got nothing"
        if self.type == "int_list":
            if not isinstance(value, list) or not value or not all(_is_int(v) for v in value):
                return f"must be a list of integers such as [64, 32], got {value!r:.60}"
            items = value
        elif self.type == "int" and not _is_int(value):
            return f"must be {self._kind()}, got {value!r:.60}"
        elif self.type == "float" and not (_is_int(value) or isinstance(value, float)):
            return f"must be {self._kind()}, got {value!r:.60}"
        elif self.type == "bool" and not isinstance(value, bool):
            return f"must be true or false, got {value!r:.60}"
        elif self.type == "str":
            if value not in self.choices:
                return f"must be one of {', '.join(self.choices)}, got {value!r:.60}"
            return None
        else:
            items = [value]
        for item in items if self.type in ("int", "float", "int_list") else ():
            low_ok = self.minimum is None or (
                item > self.minimum if self.exclusive_minimum else item >= self.minimum
            )
            if not low_ok or (self.maximum is not None and item > self.maximum):
                return f"must be {self._range()}, got {value!r:.60}"
        return None

    def _kind(self) -> str:
        return {"int": "an integer", "float": "a number", "bool": "true or false"}.get(self.type, self.type)

    def _range(self) -> str:
        low = (
            ""
            if self.minimum is None
            else f"{'>' if self.exclusive_minimum else '>='} {_bound(self.minimum)}"
        )
        high = "" if self.maximum is None else f"<= {_bound(self.maximum)}"
        return " and ".join(p for p in (low, high) if p)

    def describe(self) -> str:
        if self.choices:
            return "|".join(self.choices)
        rng = self._range()
        return f"{self.type} {rng}".strip()


def _bound(value: float) -> str:
    """A range's end as a person would type it: 2147483647, 1000000, 0.95 (never 2.14748e+09)."""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Algorithm:
    name: str
    learning_type: str
    task_types: tuple[str, ...]
    params: tuple[Param, ...]
    default_metric: str | None = None
    description: str = ""
    note: str = ""
    servable: bool = True

    def param(self, key: str) -> Param | None:
        for p in self.params:
            if key == p.name or key in p.aliases:
                return p
        return None

    @property
    def param_names(self) -> list[str]:
        return sorted(p.name for p in self.params)

    def metric_for(self, task_type: str) -> str:
        return self.default_metric or DEFAULT_METRIC[task_type]


SEED = Param("random_state", "int", 42, 0, 2**31 - 1, help="seed for every random choice")
FEATURE_DIM = Param(
    "feature_dim",
    "int",
    None,
    1,
    1_000_000,
    nullable=True,
    help="number of input features (SageMaker's spelling); checked against the data",
)
_NN_COMMON = (
    Param("hidden_units", "int_list", [64, 32], 1, 4096, help="units per hidden layer"),
    Param("epochs", "int", 100, 1, 10000),
    Param("learning_rate", "float", 1e-3, 0, 10, exclusive_minimum=True),
    Param("batch_size", "int", 32, 1, 65536),
)
_RL_BUDGET = (
    Param(
        "num_episodes",
        "int",
        None,
        1,
        10_000_000,
        nullable=True,
        aliases=("episodes",),
        help="budget: stop after this many training episodes (give one budget)",
    ),
    Param(
        "training_iterations",
        "int",
        None,
        1,
        100_000,
        nullable=True,
        aliases=("iterations",),
        help="budget: stop after this many RLlib iterations (give one budget)",
    ),
    Param(
        "timesteps",
        "int",
        None,
        1,
        1_000_000_000,
        nullable=True,
        aliases=("total_timesteps",),
        help="budget: stop after this many environment steps; 100000 when no budget is given",
    ),
)


def _rl_params(*, lr: float, batch: int, runners: int, min_runners: int = 0, extra=()) -> tuple:
    """Hyperparameters every RLlib algorithm shares, with its own defaults, then its own ones."""
    return (
        Param("gamma", "float", 0.99, 0, 1, exclusive_minimum=True, help="discount factor"),
        Param("learning_rate", "float", lr, 0, 1, exclusive_minimum=True, aliases=("lr",)),
        *_RL_BUDGET,
        Param("train_batch_size", "int", batch, 16, 1_000_000, help="env steps per update"),
        Param(
            "hidden_units",
            "int_list",
            [256, 256],
            1,
            4096,
            aliases=("model_size", "fcnet_hiddens"),
            help="policy network layers",
        ),
        Param("num_env_runners", "int", runners, min_runners, 256, help="sampling actors, 1 CPU each"),
        Param("evaluation_episodes", "int", 10, 1, 10_000, help="episodes the trained policy is scored on"),
        *extra,
        SEED,
    )


_ASYNC_EXTRA = (Param("entropy_coeff", "float", 0.01, 0, 1),)
_PPO = _rl_params(
    lr=3e-4,
    batch=4000,
    runners=1,
    extra=(
        Param("num_epochs", "int", 10, 1, 1000, aliases=("num_sgd_iter",), help="passes over each batch"),
        Param("minibatch_size", "int", 256, 1, 1_000_000, aliases=("sgd_minibatch_size",)),
        Param("clip_param", "float", 0.3, 0, 10, exclusive_minimum=True),
        Param("entropy_coeff", "float", 0.0, 0, 1),
    ),
)
_DQN = _rl_params(
    lr=5e-4,
    batch=32,
    runners=0,
    extra=(
        Param("replay_buffer_capacity", "int", 50_000, 100, 10_000_000, aliases=("buffer_size",)),
        Param("target_network_update_freq", "int", 500, 1, 10_000_000, help="env steps between syncs"),
        Param(
            "learning_starts",
            "int",
            1000,
            0,
            10_000_000,
            aliases=("num_steps_sampled_before_learning_starts",),
            help="env steps sampled before the first update",
        ),
        Param("exploration_final_epsilon", "float", 0.05, 0, 1),
        Param(
            "exploration_timesteps", "int", 10_000, 1, 1_000_000_000, help="epsilon decays over these steps"
        ),
        Param("double_q", "bool", True),
        Param("dueling", "bool", True),
    ),
)
_APPO = _rl_params(lr=5e-4, batch=500, runners=1, min_runners=1, extra=_ASYNC_EXTRA)

ALGORITHMS: dict[str, Algorithm] = {
    a.name: a
    for a in (
        Algorithm(
            "random_forest",
            "supervised",
            ("classification", "regression"),
            (
                Param("n_estimators", "int", 100, 1, 5000),
                Param("max_depth", "int", None, 1, 1000, nullable=True),
                Param("min_samples_split", "int", 2, 2, 100_000),
                Param("min_samples_leaf", "int", 1, 1, 100_000),
                Param("max_features", "str", "sqrt", choices=("sqrt", "log2", "all")),
                SEED,
            ),
            description="scikit-learn RandomForest",
        ),
        Algorithm(
            "xgboost",
            "supervised",
            ("classification", "regression"),
            (
                Param("n_estimators", "int", 100, 1, 10000, aliases=("num_round",)),
                Param("max_depth", "int", 6, 1, 100),
                Param("learning_rate", "float", 0.3, 0, 1, exclusive_minimum=True, aliases=("eta",)),
                Param("subsample", "float", 1.0, 0, 1, exclusive_minimum=True),
                Param("colsample_bytree", "float", 1.0, 0, 1, exclusive_minimum=True),
                Param("min_child_weight", "float", 1.0, 0, 1e6),
                Param("gamma", "float", 0.0, 0, 1e6),
                Param("reg_lambda", "float", 1.0, 0, 1e6, aliases=("lambda",)),
                Param("reg_alpha", "float", 0.0, 0, 1e6, aliases=("alpha",)),
                SEED,
            ),
            description="XGBoost gradient-boosted trees",
        ),
        Algorithm(
            "neural_network",
            "supervised",
            ("classification", "regression"),
            _NN_COMMON
            + (
                Param("dropout", "float", 0.0, 0, 0.95),
                Param("weight_decay", "float", 0.0, 0, 1),
                SEED,
            ),
            description="PyTorch multilayer perceptron",
        ),
        Algorithm(
            "linear_regression",
            "supervised",
            ("regression",),
            (
                Param("alpha", "float", 0.0, 0, 1e6, help="L2 penalty; > 0 makes it ridge"),
                Param("fit_intercept", "bool", True),
            ),
            description="least squares; ridge when alpha > 0",
        ),
        Algorithm(
            "kmeans",
            "unsupervised",
            ("clustering",),
            (
                Param("n_clusters", "int", 8, 1, 100_000, aliases=("k",)),
                Param("max_iter", "int", 300, 1, 1_000_000),
                Param("init", "str", "k-means++", choices=("k-means++", "random")),
                Param("n_init", "int", 10, 1, 1000),
                FEATURE_DIM,
                SEED,
            ),
            description="scikit-learn KMeans",
        ),
        Algorithm(
            "dbscan",
            "unsupervised",
            ("clustering",),
            (
                Param("eps", "float", 0.5, 0, 1e9, exclusive_minimum=True),
                Param("min_samples", "int", 5, 1, 100_000),
                FEATURE_DIM,
            ),
            description="scikit-learn DBSCAN",
            servable=False,
        ),
        Algorithm(
            "autoencoder",
            "unsupervised",
            ("clustering",),
            _NN_COMMON
            + (
                Param("latent_dim", "int", 2, 1, 4096, aliases=("encoding_dim",)),
                Param("n_clusters", "int", 8, 1, 100_000, aliases=("k",)),
                FEATURE_DIM,
                SEED,
            ),
            description="PyTorch autoencoder, k-means on its latent space",
        ),
        Algorithm(
            "pca",
            "unsupervised",
            ("dimensionality_reduction",),
            (
                Param("num_components", "int", 2, 1, 100_000, aliases=("n_components",)),
                FEATURE_DIM,
                SEED,
            ),
            default_metric="explained_variance_ratio",
            description="scikit-learn PCA",
        ),
        Algorithm(
            "tsne",
            "unsupervised",
            ("dimensionality_reduction",),
            (
                Param("perplexity", "float", 30.0, 0, 1e6, exclusive_minimum=True),
                Param("n_components", "int", 2, 1, 3),
                Param("learning_rate", "float", None, 0, 1e6, exclusive_minimum=True, nullable=True),
                Param("max_iter", "int", 1000, 250, 100_000),
                FEATURE_DIM,
                SEED,
            ),
            default_metric="trustworthiness",
            description="scikit-learn t-SNE",
            servable=False,
        ),
        Algorithm(
            "ppo",
            "reinforcement",
            ("control",),
            _PPO,
            description="RLlib PPO (new API stack)",
        ),
        Algorithm(
            "dqn",
            "reinforcement",
            ("control",),
            _DQN,
            description="RLlib DQN (new API stack; discrete actions only)",
        ),
        Algorithm(
            "a3c",
            "reinforcement",
            ("control",),
            _APPO,
            description="asynchronous actor-critic, run as RLlib APPO",
            note="RLlib no longer ships A3C; a3c runs APPO, its maintained asynchronous successor.",
        ),
        Algorithm("appo", "reinforcement", ("control",), _APPO, description="RLlib APPO (new API stack)"),
        Algorithm(
            "impala",
            "reinforcement",
            ("control",),
            _APPO,
            description="RLlib IMPALA (new API stack)",
        ),
    )
}


def algorithms_for(learning_type: str) -> list[str]:
    return [a.name for a in ALGORITHMS.values() if a.learning_type == learning_type]


def check_hyperparameters(algorithm: Algorithm, params: Any) -> tuple[dict[str, Any], list[str]]:
    """Canonical names and values for `params`, and every problem found, as sentences."""
    if params is None:
        return {}, []
    if not isinstance(params, dict):
        return {}, ["hyperparameters must be a mapping of name: value."]
    problems: list[str] = []
    canonical: dict[str, Any] = {}
    for key, value in params.items():
        param = algorithm.param(str(key))
        if param is None:
            problems.append(
                f"hyperparameter {str(key)[:60]!r} is not known for {algorithm.name}; "
                f"allowed: {', '.join(algorithm.param_names)}."
            )
            continue
        if param.name in canonical:
            problems.append(f"hyperparameter '{param.name}' is given twice (as '{key}').")
            continue
        problem = param.check(value)
        if problem:
            problems.append(f"hyperparameter '{key}' {problem}.")
        else:
            canonical[param.name] = float(value) if param.type == "float" and value is not None else value
    return canonical, problems


def resolved_hyperparameters(algorithm: Algorithm, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults filled in for every parameter the user left out."""
    return {p.name: given.get(p.name, p.default) for p in algorithm.params}
