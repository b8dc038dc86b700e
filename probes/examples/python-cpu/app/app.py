"""cpu-time: an activity probe that counts CPU use as activity.

A kernel crunching numbers, a compile, a training loop: the notebook UI may
be idle while the container works. One exec per evaluation (a probe keeps no
state between evaluations) reads the container cgroup's CPU usage twice,
`intervalSeconds` apart; more than `thresholdMs` of CPU time in between is
activity. cgroup v2 (`cpu.stat`, usage_usec) is read, else cgroup v1
(`cpuacct.usage`, ns). Needs only sh, cat and sleep in the container.
"""
import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import exec as wexec
from wit_world.imports import log as wlog
from wit_world.imports.workspace_culler_probe_types import (
    ProbeError_Failure,
    ProbeError_Timeout,
    ProbeInfo,
    Workspace,
)

SEPARATOR = "--cpu-time-sample--"

SAMPLE_TWICE = r"""
sample() {
  if [ -r /sys/fs/cgroup/cpu.stat ]; then cat /sys/fs/cgroup/cpu.stat
  elif [ -r /sys/fs/cgroup/cpuacct/cpuacct.usage ]; then echo "usage_ns $(cat /sys/fs/cgroup/cpuacct/cpuacct.usage)"
  elif [ -r /sys/fs/cgroup/cpu,cpuacct/cpuacct.usage ]; then echo "usage_ns $(cat /sys/fs/cgroup/cpu,cpuacct/cpuacct.usage)"
  else echo "no cgroup CPU accounting (neither cpu.stat nor cpuacct.usage is readable)" >&2; exit 3; fi
}
sample; echo "$2"; sleep "$1"; sample
"""

DEFAULTS = {"intervalSeconds": 5, "thresholdMs": 50}


class ProbeFailure(Exception):
    pass


def usage_usec(sample: str) -> int:
    for line in sample.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "usage_usec":
            return int(parts[1])
        if len(parts) == 2 and parts[0] == "usage_ns":
            return int(parts[1]) // 1000
    raise ProbeFailure("no usage_usec or usage_ns line in the cgroup's CPU statistics")


def parse_config(text: str) -> dict:
    try:
        given = json.loads(text) if text.strip() else {}
    except ValueError as e:
        raise ProbeFailure(f"config is invalid: {e}")
    if not isinstance(given, dict):
        raise ProbeFailure("config is invalid: expected a JSON object")
    unknown = sorted(set(given) - set(DEFAULTS))
    if unknown:
        raise ProbeFailure(f"config is invalid: unknown field {unknown[0]!r}")
    config = {**DEFAULTS, **given}
    for key in DEFAULTS:
        if isinstance(config[key], bool) or not isinstance(config[key], (int, float)):
            raise ProbeFailure(f"config is invalid: {key!r} must be a number")
    if not 0 <= config["intervalSeconds"] <= 50:
        raise ProbeFailure("config is invalid: 'intervalSeconds' must be between 0 and 50")
    return config


def measure(workspace: Workspace, config: dict) -> str:
    interval = config["intervalSeconds"]
    command = wexec.Command(
        argv=["/bin/sh", "-c", SAMPLE_TWICE, "cpu-time", str(interval), SEPARATOR],
        stdin=b"",
        timeout_ms=int((interval + 10) * 1000),
    )
    try:
        out = wexec.run(command)
    except Err as e:
        if isinstance(e.value, wexec.Error_Timeout):
            raise Err(ProbeError_Timeout(f"cpu-time probe: sampling the CPU took longer than {interval + 10} s"))
        raise ProbeFailure(f"cannot run the sampler: {getattr(e.value, 'value', e.value)}")
    if out.exit_code != 0:
        stderr = out.stderr.decode("utf-8", "replace").strip()[-200:]
        raise ProbeFailure(f"the sampler exited {out.exit_code}: {stderr}")
    text = out.stdout.decode("utf-8", "replace")
    if SEPARATOR not in text:
        raise ProbeFailure("the sampler printed no second sample")
    before, after = text.split(SEPARATOR, 1)
    used_ms = (usage_usec(after) - usage_usec(before)) / 1000
    active = used_ms > config["thresholdMs"]
    wlog.log(
        wlog.Level.DEBUG,
        f"{workspace.namespace}/{workspace.name}: {used_ms:.1f} ms of CPU in {interval} s "
        f"(threshold {config['thresholdMs']} ms)",
    )
    return json.dumps({"has_activity": active})


class WitWorld(wit_world.WitWorld):
    def info(self) -> ProbeInfo:
        return ProbeInfo(
            name="cpu-time",
            version="0.1.0",
            description="Active when the container used more than thresholdMs of CPU within intervalSeconds",
            capabilities=["exec", "log"],
        )

    def probe(self, workspace: Workspace, config: str) -> str:
        # An exception escaping here would trap the probe: report it instead.
        try:
            return measure(workspace, parse_config(config))
        except ProbeFailure as e:
            raise Err(ProbeError_Failure(f"cpu-time probe: {e}"))
        except Err:
            raise
        except Exception as e:  # noqa: BLE001 - a probe must never trap
            raise Err(ProbeError_Failure(f"cpu-time probe: {type(e).__name__}: {e}"))
