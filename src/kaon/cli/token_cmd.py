"""`kaon token create|list|revoke|audit`: API tokens for served models, and the audit log of admin actions.

    kaon token create --name ci --scopes predict,explain --rate 50/s --expires 30d
    kaon token list
    kaon token revoke ci
    kaon token audit

The token is printed once, on stdout alone (so `TOKEN=$(kaon token create ... )` works); the
registry keeps only a salted scrypt hash. The lead wires this with
`app.add_typer(token_app, name="token")`.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from kaon.cli.app import make_console, reporting_errors

token_app = typer.Typer(help="API tokens: create (shown once), list, revoke; the audit log.", no_args_is_help=True)
console = make_console()
err_console = make_console(stderr=True)



@token_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="A name to recognise the token by, e.g. ci.")],
    scopes: Annotated[str, typer.Option("--scopes", help="Comma-separated: predict, explain, metrics, admin.")]
    = "predict",
    rate: Annotated[str | None, typer.Option("--rate", help="Rate limit, e.g. 50/s or 3000/min.")] = None,
    burst: Annotated[int | None, typer.Option("--burst", min=1, help="Requests allowed at once above the rate. "
                                                                    "\\[default: one second's worth]")] = None,
    max_concurrent: Annotated[int | None, typer.Option("--max-concurrent", min=1,
                                                       help="Requests in flight at once.")] = None,
    expires: Annotated[str | None, typer.Option("--expires", help="Lifetime, e.g. 30d, 12h.")] = None,
) -> None:
    """Create a token and print it once. Only its salted hash is stored."""
    from kaon.registry import Registry
    from kaon.security import generate_token, parse_duration_s, parse_rate, parse_scopes

    with reporting_errors():
        scope_list = parse_scopes(scopes)
        rate_per_s = parse_rate(rate) if rate else None
        expires_in_s = parse_duration_s(expires) if expires else None
        new = generate_token()
        with Registry() as registry:
            record = registry.tokens.create(
                name, token_id=new.token_id, secret_hash=new.secret_hash, scopes=scope_list, rate_per_s=rate_per_s,
                burst=burst if rate_per_s is not None else None, max_concurrent=max_concurrent,
                expires_in_s=expires_in_s,
            )
    print(new.token, flush=True)
    details = [f"scopes {', '.join(record.scopes)}"]
    if record.rate_per_s is not None:
        details.append(f"rate {record.rate_per_s:g}/s")
    if record.expires_at is not None:
        details.append(f"expires {_time(record.expires_at)}")
    err_console.print(
        f"[green]created[/] token '{escape(record.name)}' (id {record.token_id}; {'; '.join(details)}). "
        "It is shown only now: store it in a secret manager. Use it with: "
        "-H 'Authorization: Bearer <token>'", highlight=False, soft_wrap=True)


@token_app.command("list")
def list_tokens(
    include_revoked: Annotated[bool, typer.Option("--all", help="Show revoked tokens too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """List tokens (ids, names, scopes, limits; never the tokens themselves)."""
    from kaon.registry import Registry

    with reporting_errors(), Registry() as registry:
        records = registry.tokens.list(include_revoked=include_revoked)
    if as_json:
        print(json.dumps([{
            "id": r.token_id, "name": r.name, "scopes": list(r.scopes), "rate_per_s": r.rate_per_s, "burst": r.burst,
            "max_concurrent": r.max_concurrent, "status": r.status(), "created_by": r.created_by,
            "created_at": r.created_at.isoformat(),
            "expires_at": r.expires_at.isoformat() if r.expires_at else None,
        } for r in records], indent=2))
        return
    if not records:
        console.print("no tokens: every route is open unless the server runs with --require-auth. "
                      "Create one with: kaon token create --name NAME --scopes predict")
        return
    table = Table("id", "name", "scopes", "rate", "in flight", "status", "created (UTC)", "expires (UTC)")
    table.columns[0].no_wrap = True
    for r in records:
        table.add_row(r.token_id, escape(r.name), ", ".join(r.scopes),
                      f"{r.rate_per_s:g}/s" if r.rate_per_s is not None else "-",
                      str(r.max_concurrent) if r.max_concurrent else "-", r.status(),
                      _time(r.created_at), _time(r.expires_at) if r.expires_at else "never")
    console.print(table)


@token_app.command("revoke")
def revoke(
    name: Annotated[str, typer.Argument(help="The token's name or id.")],
) -> None:
    """Revoke a token (by name, id, or the token itself). Running servers refuse it within about 5 seconds."""
    from kaon.registry import Registry
    from kaon.security.tokens import token_id_of

    with reporting_errors(), Registry() as registry:
        record = registry.tokens.revoke(token_id_of(name) or name)  # a pasted token: its public id
        remaining = len(registry.tokens.active())
    console.print(f"revoked token '{escape(record.name)}' (id {record.token_id}); servers refuse it within ~5 s.")
    if not remaining:
        err_console.print("[yellow]warning[/]: no active tokens remain, so servers keep refusing requests without "
                          "one (auth stays on once a token was created: revoking never opens a server). Create "
                          "one with: kaon token create --name NAME", highlight=False)


@token_app.command("audit")
def audit(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many recent actions.")] = 50,
) -> None:
    """The audit log: tokens created and revoked, aliases moved, versions deleted, deployments changed."""
    from kaon.registry import Registry

    with reporting_errors(), Registry() as registry:
        events = registry.tokens.audit_log(limit)
    if not events:
        console.print("no admin actions yet.")
        return
    table = Table("time", "action", "subject", "by", "details")
    for event in events:
        payload = dict(event["payload"])
        actor = str(payload.pop("actor", "-"))
        details = ", ".join(f"{k}={v}" for k, v in payload.items() if v not in (None, [], {}))
        table.add_row(_time(event["time"]), event["kind"], escape(event["subject"]), escape(actor),
                      escape(details[:80]))
    console.print(table)


def _time(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M")
