"""``kdumpy status`` checks of a network target, without a crash, and of the last capture's
fallback.

:func:`network_target_findings` returns ``(severity, what, detail, fix)`` tuples (severity
``ok`` / ``warning`` / ``error``) for the status report to show:

* ``ssh``: kdumpy's key (present, 0600), the pinned host key, and a login exactly as the
  capture kernel's that creates and write-tests the dump directory
  (:func:`kdumpy.setup.propagate.ssh_target_findings`);
* ``s3``: the credentials file (present, 0600, parseable) and the bucket, asked for with
  those credentials (``HeadBucket``: reachability and a refused key show here);
* ``nfs``: nothing is mounted from the running system (the capture kernel mounts it);
* any target: when ``/var/lib/kdumpy/last-capture.json`` says the last capture fell back to
  ``target.fallback_path``, a warning naming the target that failed, why, and where the dump
  went instead.
"""

from __future__ import annotations

from typing import Any

from kdumpy.errors import KdumpyError
from kdumpy.setup import state
from kdumpy.setup.paths import SystemPaths

Finding = tuple[str, str, str, str | None]


def fallback_finding(paths: SystemPaths) -> Finding | None:
    """The last capture's fallback, if it used one."""
    last = state.read_last_capture(paths)
    fb = (last or {}).get("fallback")
    if not last or not isinstance(fb, dict):
        return None
    where = last.get("dump_dir") or "nowhere"
    return ("warning", "last capture",
            f"{fb.get('from')} failed ({fb.get('error')}); the dump went to the local "
            f"fallback {where} ({last.get('status')}) at {last.get('time')}",
            "check the network target (kdumpy status), then copy the dump there")


def s3_findings(target: Any, paths: SystemPaths, *, attempts: int = 2,
                timeout: float = 10.0) -> list[Finding]:
    from kdumpy.capture.s3 import S3Directory, make_client, parse_s3_url, read_credentials
    what = "s3 target"
    creds_path = paths.path(target.s3_credentials)
    try:
        creds = read_credentials(creds_path)
    except KdumpyError as exc:
        return [("error", what, str(exc), f"write {target.s3_credentials} (mode 0600)")]
    try:
        client = make_client(target.s3_endpoint, creds, target.s3_region, attempts=attempts,
                             connect_timeout=timeout, read_timeout=timeout)
        d = S3Directory(parse_s3_url(target.s3_url), client, endpoint=target.s3_endpoint)
        d.check()
    except (OSError, KdumpyError, ValueError) as exc:
        return [("error", what, getattr(exc, "strerror", None) or str(exc),
                 "check s3_endpoint, the bucket and the credentials")]
    return [("ok", what, f"{target.s3_url} at {target.s3_endpoint}: bucket reachable with "
                         f"the credentials in {target.s3_credentials}", None)]


def network_target_findings(cfg: Any, paths: SystemPaths | None = None) -> list[Finding]:
    """Every finding for ``cfg`` (a :class:`kdumpy.setup.config.Config`)."""
    paths = paths or SystemPaths()
    t = cfg.target
    out: list[Finding] = []
    if t.kind == "ssh":
        from kdumpy.setup.propagate import (
            DEFAULT_KEY,
            DEFAULT_KNOWN_HOSTS,
            ssh_target_findings,
        )
        for sev, detail, fix in ssh_target_findings(
                t, key=paths.path(t.ssh_key or DEFAULT_KEY),
                known_hosts=paths.path(t.ssh_known_hosts or DEFAULT_KNOWN_HOSTS)):
            out.append((sev, "ssh target", detail, fix))
    elif t.kind == "s3":
        out += s3_findings(t, paths)
    elif t.kind == "nfs":
        out.append(("ok", "nfs target", f"{t.nfs_source} is mounted by the capture kernel "
                                        "(not checked from here)", None))
    fb = fallback_finding(paths)
    if fb:
        out.append(fb)
    return out
