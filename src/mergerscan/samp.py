"""Send the finished FITS table to TOPCAT (or any SAMP client) over SAMP (astropy.samp).

The hub is found the standard way: ``$SAMP_HUB`` (``std-lockurl:...``), else ``~/.samp`` - TOPCAT
runs one when none is there.  The table is sent with ``table.load.fits`` as a file:// URL, so the
receiving application must see this file system (same machine or a shared disk).
"""

from __future__ import annotations

from pathlib import Path

from .run_layout import RunLayout

MTYPE = "table.load.fits"
NO_HUB = "no SAMP hub is running: start TOPCAT (it starts a hub) or another SAMP hub, then run `mergerscan samp {out}`"


class SampError(RuntimeError):
    """Why the table could not be sent; one line."""


def fits_of(path: str | Path) -> Path:
    """``OUT`` (a process-catalog output directory) or a FITS file -> the FITS file."""
    p = Path(path)
    f = RunLayout(p).fits if p.is_dir() else p
    if not f.is_file():
        raise SampError(f"{f}: no such file (is {path} a finished process-catalog output directory?)")
    try:
        with open(f, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise SampError(f"{f}: cannot read it ({exc.strerror or exc})") from None
    if head != b"SIMPLE":  # every FITS file begins so; TOPCAT would fail on anything else, later and less clearly
        raise SampError(f"{f}: not a FITS file")
    return f.resolve()


def send_table(path: str | Path, name: str | None = None, timeout: float = 30.0) -> list[str]:
    """Send the table to every SAMP client that loads FITS tables; returns their names.
    Raises SampError when no hub runs, no client takes tables, or every client refused."""
    from astropy.samp import SAMPIntegratedClient

    fits = fits_of(path)
    out = fits.parent if fits == RunLayout(fits.parent).fits else fits
    client = SAMPIntegratedClient(
        name="mergerscan", description="galaxy-merger scores (process-catalog)", callable=False
    )
    try:
        client.connect()
    except Exception as exc:  # SAMPHubError, or a stale lockfile's connection error
        msg = NO_HUB.format(out=out)
        raise SampError(
            msg
            if "Unable to find" in str(exc) or isinstance(exc, OSError)
            else f"{msg} ({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    try:
        targets = list(client.get_subscribed_clients(MTYPE))
        if not targets:
            raise SampError(f"a SAMP hub is running but no application there loads FITS tables ({MTYPE}); start TOPCAT")
        message = {"samp.mtype": MTYPE, "samp.params": {"url": fits.as_uri(), "name": name or f"{out.name} mergers"}}
        sent, errors = [], []
        for cid in targets:
            label = client.get_metadata(cid).get("samp.name", cid)
            try:
                reply = client.call_and_wait(cid, message, str(int(timeout)))
            except Exception as exc:  # e.g. the client timed out; try the others
                errors.append(f"{label}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                continue
            if reply.get("samp.status") == "samp.error":
                errors.append(f"{label}: {reply.get('samp.error', {}).get('samp.errortxt', 'refused')}")
            else:
                sent.append(label)
        if not sent:
            raise SampError(f"no SAMP client loaded {fits}: {'; '.join(errors)}")
        return sent
    finally:
        client.disconnect()
