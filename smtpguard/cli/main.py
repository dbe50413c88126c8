"""The ``smtpguard`` command: a click group whose subcommands load lazily.

Lazy loading keeps ``smtpguard suppression check`` fast to start (it is called
from scripts, once per address) by not importing the relay or the classifier.
Every command shares two options, ``--config`` and ``--data-dir``; the loaded
:class:`~smtpguard.config.Config` reaches subcommands through :func:`get_config`.

Errors the operator must fix (:class:`~smtpguard.errors.UserError`) print one
line, ``smtpguard: error: ...``, and exit 2; click's own usage errors exit 2 too.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from smtpguard import __version__
from smtpguard.config import ENV_CONFIG, ENV_DATA_DIR, SYSTEM_CONFIG, Config, load
from smtpguard.display import shown
from smtpguard.errors import UserError

# name -> "module:attribute"; each module owns one command (group).
COMMANDS: dict[str, tuple[str, str]] = {
    "config": ("smtpguard.cli.config_cmd:config", "Validate and print the configuration."),
    "suppression": (
        "smtpguard.cli.suppression:suppression",
        "Query and edit the suppression list.",
    ),
    "store": (
        "smtpguard.cli.store:store",
        "Schema migrations, copying the list to PostgreSQL and back, the fleet's sync.",
    ),
    "classify": ("smtpguard.cli.classify:classify", "Classify bounce messages or SMTP replies."),
    "rules": ("smtpguard.cli.classify:rules", "Validate classification rule files."),
    "shaping": ("smtpguard.cli.shaping:shaping", "Validate traffic-shaping files."),
    "serve": ("smtpguard.cli.serve:serve", "Run the relay (Postfix relayhost)."),
    "queue": ("smtpguard.cli.queue:queue", "Inspect and act on the relay's queue."),
    "milter": ("smtpguard.cli.milter_cmd:milter", "Run the milter (Postfix smtpd_milters)."),
    "policy": (
        "smtpguard.cli.policy_cmd:policy",
        "Run the Postfix policy service (check_policy_service).",
    ),
    "doctor": (
        "smtpguard.cli.doctor:doctor",
        "Check a domain's MX, SPF, DKIM, DMARC, PTR and DNSBL listings.",
    ),
    "intake": (
        "smtpguard.cli.intake:intake",
        "Feed stored bounces (files, mbox, Maildir) to the suppression policy.",
    ),
    "webhooks": (
        "smtpguard.cli.webhooks:webhooks",
        "Receive ESP event webhooks (Amazon SES, SendGrid, Postmark).",
    ),
    "logscan": (
        "smtpguard.cli.logscan:logscan",
        "Classify bounces and deferrals in Postfix, Exim and Sendmail logs.",
    ),
    "report": (
        "smtpguard.cli.report:report",
        "Bounce and complaint rates by domain and day, reasons, suppressions, the queue.",
    ),
}


CONFIG_HELP = (
    f"TOML configuration file (env {ENV_CONFIG}; default: {SYSTEM_CONFIG} if it exists,"
    " else embedded defaults; /dev/null: embedded defaults)."
)
DATA_DIR_HELP = (
    f"Directory of the SQLite database (env {ENV_DATA_DIR}; default: the config file's"
    " store.data_dir, else ./var)."
)


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        target, _ = COMMANDS[cmd_name]
        module, attr = target.split(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError):
            if ctx.resilient_parsing:
                return None
            raise

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


class State:
    """Options shared by every subcommand; the config is loaded on first use."""

    def __init__(self, config_path: str | None, data_dir: str | None) -> None:
        self.config_path = config_path
        self.data_dir = data_dir
        self._config: Config | None = None

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load(self.config_path, data_dir=self.data_dir)
        return self._config


def _set_state(attr: str):  # type: ignore[no-untyped-def]
    def callback(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
        if value is not None:
            state = ctx.find_object(State)
            if state is None:
                state = ctx.ensure_object(lambda: State(None, None))  # type: ignore[arg-type]
            setattr(state, attr, value)
            state._config = None

    return callback


def common_options(f: Any) -> Any:
    """``--config`` and ``--data-dir`` on a leaf command too, so both spellings work:
    ``smtpguard --data-dir D suppression list`` and ``smtpguard suppression list --data-dir D``.
    Put it on every leaf command."""
    f = click.option(
        "--data-dir",
        metavar="DIR",
        expose_value=False,
        callback=_set_state("data_dir"),
        help=DATA_DIR_HELP,
    )(f)
    f = click.option(
        "--config",
        metavar="PATH",
        expose_value=False,
        callback=_set_state("config_path"),
        help=CONFIG_HELP,
    )(f)
    return f


def get_config(ctx: click.Context | None = None) -> Config:
    """The effective configuration for the running command."""
    ctx = ctx or click.get_current_context()
    return ctx.find_object(State).config  # type: ignore[union-attr]


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    metavar="PATH",
    envvar=ENV_CONFIG,
    help=CONFIG_HELP,
)
@click.option(
    "--data-dir",
    metavar="DIR",
    envvar=ENV_DATA_DIR,
    help=DATA_DIR_HELP,
)
@click.version_option(__version__, prog_name="smtpguard")
@click.pass_context
def cli(ctx: click.Context, config_path: str | None, data_dir: str | None) -> None:
    """smtpguard: a relay beside Postfix that learns from every bounce.

    It queues outgoing mail durably, delivers it, classifies every reply and
    returned bounce, and refuses recipients on its suppression list.
    """
    ctx.obj = State(config_path, data_dir)


def main(argv: list[str] | None = None) -> Any:
    """Entry point: run the CLI, turning operator errors into one line + exit 2."""
    try:
        return cli.main(args=argv, prog_name="smtpguard", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.Abort:
        click.echo("smtpguard: aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except UserError as e:
        click.echo(f"smtpguard: error: {shown(e)}", err=True)
        sys.exit(e.exit_code)
    except BrokenPipeError:
        sys.exit(0)
    except KeyboardInterrupt:
        sys.exit(130)
