"""`python -m tests.controlplane {build,up,down}`: what `make cluster-up` / `make cluster-down` run."""

from __future__ import annotations

import argparse
import sys

from tests.controlplane import BIN, STATE, ControlPlane, Unavailable, build, stop_recorded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.controlplane", description=__doc__)
    parser.add_argument("command", choices=["build", "up", "down"])
    args = parser.parse_args(argv)
    try:
        if args.command == "down":
            stopped = stop_recorded(STATE)
            print("stopped: " + (", ".join(stopped) or "nothing was running"))
            return 0
        made = build()
        what = f"built in {made.seconds:.0f} s" if made.built_now else "up to date, nothing rebuilt"
        print(f"control plane binary {made.binary.relative_to(STATE.parent)}: {what}")
        if args.command == "build":
            return 0
        if stop_recorded(STATE):
            print("stopped the control plane that was running")
        plane = ControlPlane(STATE, BIN, build=made).start()
    except Unavailable as error:
        print(f"control plane: {error}", file=sys.stderr)
        return 1
    kubeconfig = plane.kubeconfig.relative_to(STATE.parent)
    print(
        f"API server {plane.server} ready in {plane.started_seconds:.1f} s (etcd, kube-apiserver, "
        "kube-controller-manager; logs in .cluster/run/)"
    )
    print(f"  export KUBECONFIG=$PWD/{kubeconfig} PATH=$PWD/{BIN.relative_to(STATE.parent)}:$PATH")
    print("  kubectl get namespaces        # make cluster-down stops it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
