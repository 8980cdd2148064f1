"""``gradsight serve PATH``: the report page, live, while runs record."""

from __future__ import annotations

from pathlib import Path

import click

from gradsight.cli import UserError


@click.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but a loopback address lets every machine that can reach "
                   "the port read the runs.")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535),
              help="Port to listen on (0: any free port).")
def command(path: Path, host: str, port: int) -> None:
    """Serve the report page of the runs under PATH, updating itself while they record.

    PATH is a run directory or a folder holding runs (runs created in it later
    appear on the page). Open the printed address in a browser: the page is the
    one 'gradsight report' writes (same charts and selectors), and it waits on the
    server for what is new: the steps recorded since the last one it has (sent
    within about a tenth of a second of their commit), the status of each run
    (running / finished / failed, steps dropped, store errors) and the doctor's
    findings, which are re-computed in the background, at low priority, as a run
    records; the figures the server draws (gradient distributions, noise scale,
    gradient through time) follow every 15 s or more. A folder of more than 6
    runs lists them all and reads each when it comes near the view. The server
    only reads the runs and never changes them, and it answers only for runs
    under PATH. Ctrl-C stops it.

    \b
    Example:
      gradsight serve runs/     # -> serving http://127.0.0.1:8765/
    """
    from gradsight.report.server import is_loopback, serve

    try:
        server = serve(path, host, port)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    if not is_loopback(host):
        click.echo(f"gradsight: warning: listening on {host}: anyone who can reach port {server.server_address[1]} "
                   "can read these runs (no password, no encryption)", err=True)
    click.echo(f"serving {server.url}  (Ctrl-C to stop)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
