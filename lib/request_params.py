"""Request parameters of the app's tasks: named, typed and range-checked before a request is dispatched.

MONAI Label hands a request's JSON ``params`` to a task as a plain dict and checks nothing: a training
request with ``max_epochs: "abc"`` is answered 200 and fails later in the training subprocess, and a bad
``device`` fails deep inside inference as a 500. The app checks each request against its task's
:class:`RequestSpec` first (``main.py``), so a bad value is a 422 that names the parameter.

* A parameter that overrides a setting (``max_epochs`` -> ``epochs``, ``lease_seconds``) takes its type
  and its validity (e.g. a patch size that is a multiple of 8) from :class:`~apps.slpt.config.SLPTConfig`.
  A training request is also bounded by :data:`TRAIN_RANGES`, what one client may make the server spend:
  ``max_epochs``/``epochs`` 1-5000, ``iterations_per_epoch`` 1-1000, ``batch_size`` 1-32, ``patch_size``
  16-192 and ``learning_rate`` 1e-6-1 (``--conf`` settings are the operator's and only the config's checks
  bound them).
* Other parameters have a check function (a choice, a device name, a flag).

A request is checked once, in the server, and what the check parsed travels on with it: a training run's
setting overrides reach the trainer under :data:`CHECKED_SETTINGS` (the run itself is a subprocess that
only receives the request's JSON), so the trainer applies them instead of reading the raw values again.

Unknown names: MONAI Label's clients add keys of their own (OHIF: ``result_extension``, ``result_dtype``,
``restore_label_idx``; Slicer: ``client_id``, ``label_info``), so inference requests are *open*: keys the
app does not read pass through to MONAI Label, unchecked, as it intends. Training and active-learning
requests are *closed*: only their parameters and MONAI Label's own keys are accepted, because a misspelt
``max_epoch`` silently ignored costs a training round. In both, a key that names a server setting
(``sw_overlap``, ``slpt_min_round_size``) is refused with a pointer to ``--conf``, and so is any unknown
``slpt_*`` key.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

from apps.slpt.config import CONF_PREFIX, SLPTConfig

Check = Callable[[Any], None]  # raises ValueError with a message that completes "<name> ..."

# Parameters a training run may set, mapped to the config fields they override ("max_epochs" is MONAI Label's
# name for the epochs).
TRAIN_SETTINGS = {"max_epochs": "epochs", "epochs": "epochs", "iterations_per_epoch": "iterations_per_epoch",
                  "learning_rate": "learning_rate", "batch_size": "batch_size", "patch_size": "patch_size"}

# The values a training request may set, {config field: (lowest, highest)}, both included; out of range is a 422
# before any training subprocess starts. They bound memory (batch_size x patch_size^3 voxels, times the K prompt
# sets) and time (epochs x iterations_per_epoch steps): 32 patches of 192^3 already need tens of GB, and the
# default round is 200 x 8 steps. A learning rate above 1 only diverges.
TRAIN_RANGES = {"epochs": (1, 5000), "iterations_per_epoch": (1, 1000), "batch_size": (1, 32),
                "patch_size": (16, 192), "learning_rate": (1e-6, 1.0)}

# Request key under which the server hands a task the setting overrides it checked ({config field: value}).
# A client cannot send it: it is an unknown ``slpt_*`` name, which every spec refuses.
CHECKED_SETTINGS = "slpt_checked_settings"


class InvalidParameter(ValueError):
    """A request parameter that cannot be used; the message names it."""

    def __init__(self, name: str, message: str):
        super().__init__(message)
        self.name = name


@dataclass(frozen=True)
class RequestSpec:
    """The parameters one task reads from a request.

    Args:
        task: how messages call the task, e.g. ``"train/slpt"``.
        settings: request key -> :class:`SLPTConfig` field it overrides for this request.
        ranges: :class:`SLPTConfig` field -> the (lowest, highest) value a request may set it to.
        checks: request key -> check of its value.
        framework: keys MONAI Label or its clients send, accepted as they are.
        open: accept any other key too (inference), except server settings and ``slpt_*`` keys.
    """

    task: str
    settings: Mapping[str, str] = field(default_factory=dict)
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    checks: Mapping[str, Check] = field(default_factory=dict)
    framework: frozenset[str] = frozenset()
    open: bool = False

    def accepted(self) -> list[str]:
        return sorted({*self.settings, *self.checks})


@dataclass(frozen=True)
class CheckedRequest:
    """What checking a request produced.

    Args:
        config: the app's config with the request's setting overrides applied.
        overrides: config field -> the request's value for it, parsed (what :data:`CHECKED_SETTINGS` carries).
    """

    config: SLPTConfig
    overrides: dict[str, Any]


def check_request(request: Mapping[str, Any], spec: RequestSpec, config: SLPTConfig) -> CheckedRequest:
    """Check ``request`` against ``spec``; returns ``config`` with the request's setting overrides, and those.

    Raises:
        InvalidParameter: an unknown or server-only name, a value of the wrong type or out of range.
    """
    fields = {f.name for f in dataclasses.fields(SLPTConfig)}
    base = config
    accepted = ", ".join(spec.accepted()) or "none"
    for key in request:
        if key in spec.settings or key in spec.checks or key in spec.framework:
            continue
        name = key.removeprefix(CONF_PREFIX)
        if name in fields:
            raise InvalidParameter(key, f"{key!r} is a server setting (--conf {CONF_PREFIX}{name} at start-up), "
                                        f"not a parameter of {spec.task}; its parameters: {accepted}")
        if not spec.open or key.startswith(CONF_PREFIX):
            raise InvalidParameter(key, f"unknown parameter {key!r} for {spec.task}; its parameters: {accepted} "
                                        f"(server settings such as the round size are --conf {CONF_PREFIX}* values, "
                                        f"listed in GET /info/ under slpt.config)")
    for key, check in spec.checks.items():
        if key in request:
            try:
                check(request[key])
            except ValueError as e:
                raise InvalidParameter(key, f"parameter {key!r} of {spec.task} {e}") from e
    overrides: dict[str, Any] = {}
    for key, name in spec.settings.items():
        if key in request:
            try:
                config = config.with_overrides(**{name: request[key]})
            except ValueError as e:
                # SLPTConfig's messages end with the whole config, which only buries the reason here.
                reason = str(e).split(" (config: ")[0]
                raise InvalidParameter(key, f"parameter {key!r} of {spec.task} has a bad value "
                                            f"{request[key]!r}: {reason}") from e
            value = getattr(config, name)
            low, high = spec.ranges.get(name, (value, value))
            # The server's own setting always passes: clients such as Slicer echo the advertised config back.
            if not low <= value <= high and value != getattr(base, name):
                raise InvalidParameter(key, f"parameter {key!r} of {spec.task} is {request[key]!r}, outside its "
                                            f"range [{low:g}, {high:g}]")
            overrides[name] = value
    return CheckedRequest(config, overrides)


def task_specs(
    infer_configs: Mapping[str, Mapping[str, Any]],
    train_configs: Mapping[str, Mapping[str, Any]],
    device_names: Collection[str],
    gpu_count: int = 0,
) -> dict[str, RequestSpec]:
    """The spec of each of the app's tasks, keyed ``"<kind>/<name>"`` (``"infer/slpt"``).

    Args:
        infer_configs: infer task name -> the config it advertises; a list in it is a choice MONAI Label shows
            its clients (e.g. ``slpt_output``).
        train_configs: trainer name -> the config it advertises, which MONAI Label adds to every run's request
            and Slicer echoes back.
        device_names: MONAI Label's names for the machine's devices.
        gpu_count: the machine's CUDA devices, which a training request's ``gpus`` may name.
    """
    devices, gpus = device(device_names), gpu_ids(gpu_count)
    specs = {}
    for name, config in infer_configs.items():
        choices = {k: one_of(v) for k, v in config.items() if isinstance(v, list)}
        specs[f"infer/{name}"] = RequestSpec(f"infer/{name}", checks={**choices, "device": devices}, open=True)
    for name, config in train_configs.items():
        checks = {"warm_start": flag, "multi_gpu": boolean, "gpus": gpus}
        own = {*TRAIN_SETTINGS, *checks}
        specs[f"train/{name}"] = RequestSpec(
            f"train/{name}", settings=TRAIN_SETTINGS, ranges=TRAIN_RANGES, checks=checks,
            framework=frozenset({*config, "model", "bundle_path", "client_id"} - own),
        )
    specs["activelearning/tesla"] = RequestSpec(
        "activelearning/tesla", settings={"lease_seconds": "lease_seconds"},
        checks={"client_id": client_id}, framework=frozenset({"strategy"}),
    )
    for stock in ("random", "first"):  # MONAI Label's own: they read no parameter of ours
        specs[f"activelearning/{stock}"] = RequestSpec(
            f"activelearning/{stock}", checks={"client_id": client_id}, framework=frozenset({"strategy"}),
        )
    return specs


def parse_params(text: str | None) -> dict[str, Any]:
    """The JSON object of a multipart ``params`` field (MONAI Label's infer and datastore endpoints).

    Raises:
        InvalidParameter: not JSON, or JSON that is not an object.
    """
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise InvalidParameter("params", f"params is not valid JSON ({e}); send a JSON object, e.g. "
                                         '{"slpt_output": "label"}') from e
    if not isinstance(value, dict):
        raise InvalidParameter("params", f"params must be a JSON object, got {type(value).__name__}")
    return value


def one_of(choices: Collection[str]) -> Check:
    """A choice; a list counts as its first item (MONAI Label sends a task's choice list when unset)."""

    def check(value: Any) -> None:
        chosen = value[0] if isinstance(value, list) and value else value
        if chosen not in choices:
            raise ValueError(f"must be one of {sorted(choices)}, got {value!r}")

    return check


def device(names: Collection[str]) -> Check:
    """``cpu``, ``cuda``, ``cuda:N`` or one of MONAI Label's device names (e.g. the GPU's model name)."""

    def check(value: Any) -> None:
        chosen = value[0] if isinstance(value, list) and value else value
        if not isinstance(chosen, str) or not (chosen in names or re.fullmatch(r"cpu|cuda(:\d+)?", chosen)):
            raise ValueError(f"must be 'cpu', 'cuda', 'cuda:N' or one of {sorted(names)}, got {value!r}")

    return check


def flag(value: Any) -> None:
    """``true``/``false``, as JSON booleans or strings."""
    if not (isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false"))):
        raise ValueError(f"must be true or false, got {value!r}")


def boolean(value: Any) -> None:
    """A JSON boolean: MONAI Label tests the value's truth, so the string ``"false"`` would mean true."""
    if not isinstance(value, bool):
        raise ValueError(f"must be true or false (a JSON boolean), got {value!r}")


def gpu_ids(count: int) -> Check:
    """MONAI Label's ``gpus``: ``all`` or distinct ids ``"0,1"``, each below ``count`` (the machine's GPUs).

    Without a GPU (``count`` 0) any ids pass: the server hands its train command ``CUDA_VISIBLE_DEVICES`` and
    ``gpus: all``, finds no device, and trains in one process.
    """

    def check(value: Any) -> None:
        text = str(value).strip() if isinstance(value, (str, int)) and not isinstance(value, bool) else None
        if text == "all":
            return
        ids = text.split(",") if text else []
        if not ids or not all(re.fullmatch(r"\d+", i.strip()) for i in ids):
            raise ValueError(f"must be 'all' or GPU ids such as '0,1', got {value!r}")
        numbers = [int(i) for i in ids]
        if len(set(numbers)) != len(numbers):
            raise ValueError(f"lists a GPU twice: {value!r}")
        if count and max(numbers) >= count:
            raise ValueError(f"names GPU {max(numbers)}, but this server has {count} (ids 0-{count - 1})")

    return check


def client_id(value: Any) -> None:
    """A short string (or number) telling annotators apart."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not 0 < len(str(value)) <= 256:
        raise ValueError(f"must be a non-empty string of at most 256 characters, got {value!r}")
