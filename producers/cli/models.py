"""`torchfleet models list|show|promote|rollback`: the model registry from the command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from producers.cli.common import EXIT_INPUT, JsonOpt, console, fail, reported_errors
from producers.client import Client

app = typer.Typer(help="List, show, promote and roll back registered models.")


@app.command("list")
def models_list(as_json: JsonOpt = False) -> None:
    """Every registered model with its versions, variants and aliases."""
    with reported_errors(), Client() as client:
        described = [client.registry.describe(name) for name in client.registry.names()]
    if as_json:
        print(json.dumps(described))
        return
    from rich.table import Table

    table = Table("model", "versions", "variants", "aliases")
    for info in described:
        variants = sorted({v for per in info["versions"].values() for v in per})
        aliases = ", ".join(
            f"{a} -> {r['version']}:{r['variant']}" for a, r in info["aliases"].items()
        )
        table.add_row(info["name"], ", ".join(info["versions"]), ", ".join(variants), aliases)
    console.print(table)


@app.command("show")
def models_show(name: str, as_json: JsonOpt = False) -> None:
    """One model: every version and variant with its metrics and lineage."""
    with reported_errors(), Client() as client:
        info = client.registry.describe(name)
    if as_json:
        print(json.dumps(info))
    else:
        from producers.render import render_model

        render_model(console, info)


@app.command("promote")
def models_promote(
    ref: Annotated[str, typer.Argument(help="name:version[:variant] to point the alias at.")],
    alias: Annotated[str, typer.Option(help="Alias to move.")] = "production",
) -> None:
    """Point an alias (default production) at a version and variant."""
    from shared.jobs import ModelRef

    with reported_errors(), Client() as client:
        try:
            parsed = ModelRef.parse(ref)
        except ValueError as e:
            fail(EXIT_INPUT, str(e))
        resolved = client.registry.resolve(parsed)
        client.registry.set_alias(resolved.name, alias, resolved.version, resolved.variant)
    console.print(f"{resolved.name}@{alias} -> {resolved.version}:{resolved.variant}")


@app.command("rollback")
def models_rollback(name: str, alias: str = "production") -> None:
    """Move an alias back to where it pointed before."""
    with reported_errors(), Client() as client:
        record = client.registry.rollback(name, alias)
    console.print(f"{name}@{alias} -> {record.version}:{record.variant}")
