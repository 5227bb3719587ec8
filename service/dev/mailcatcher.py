"""A local SMTP server that catches every email and shows it: `make run` starts one on SMTP_PORT
when nothing listens there, so emails are visible without a mail provider. Tests use it too."""

import asyncio
import email
import email.policy
import signal
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class CaughtMail:
    sender: str
    recipients: list[str]
    message: EmailMessage

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(preferencelist=("plain",))
        return str(part.get_content()) if part is not None else ""

    def __str__(self) -> str:
        rule = "─" * 72
        return (
            f"{rule}\nmail from {self.sender} to {', '.join(self.recipients)}\n"
            f"Subject: {self.subject}\n\n{self.body.rstrip()}\n{rule}"
        )


class _Handler:
    def __init__(self, on_mail: Callable[[CaughtMail], None], reject: Callable[[], str | None]) -> None:
        self.on_mail = on_mail
        self.reject = reject

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if refusal := self.reject():
            return refusal
        raw = envelope.original_content or envelope.content or b""
        assert isinstance(raw, bytes)
        message = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(message, EmailMessage)
        self.on_mail(CaughtMail(str(envelope.mail_from), [str(rcpt) for rcpt in envelope.rcpt_tos], message))
        return "250 Message accepted for delivery"


def _accept_all() -> str | None:
    return None


async def serve(
    host: str, port: int, on_mail: Callable[[CaughtMail], None], *, reject: Callable[[], str | None] = _accept_all
) -> asyncio.Server:
    """Listen on host:port; every email received is handed to on_mail, unless reject() answers an
    SMTP refusal for it instead (tests use that to make a real server refuse, e.g. "421 try later")."""
    loop = asyncio.get_running_loop()
    handler = _Handler(on_mail, reject)

    def protocol() -> Any:
        return SMTP(handler, hostname="mailcatcher.local", loop=loop)

    return await loop.create_server(protocol, host=host, port=port)


async def run(host: str, port: int) -> None:
    """The console catcher of `make run`: prints each email until SIGINT / SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    server = await serve(host, port, lambda mail: print(mail, flush=True))
    print(f"Mail catcher on smtp://{host}:{port}: emails sent by the worker are printed here.", flush=True)
    async with server:
        await stop.wait()
