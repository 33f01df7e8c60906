"""`microfer serve`: the local web page for predict."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("serve")
@click.option(
    "--model",
    type=click.Path(path_type=Path),
    required=True,
    help="bundle folder from `microfer train`",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="address to listen on (0.0.0.0 also serves other machines: the page has no login)",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8000,
    show_default=True,
    help="0 = any free port",
)
@click.option(
    "--threads", type=click.IntRange(min=1), default=None, help="CPU threads for the network"
)
@click.option("--verbose", is_flag=True, help="log every request")
def serve_cmd(model, host, port, threads, verbose):
    """A local web page: upload a clip, see its emotion, the scores and the motion curve
    with onset, apex and offset (POST /api/predict also takes face images: the shipped image
    model answers with calibrated probabilities). Stop it with Ctrl+C."""
    from microfer.recognise.serve import make_server

    server = make_server(model, host=host, port=port, verbose=verbose, num_threads=threads)
    click.echo(f"microfer serving {model} at {server.url}  (Ctrl+C stops it)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
