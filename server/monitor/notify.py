"""Telling people: the log (journald under systemd), email over SMTP, and webhooks (a JSON POST).

Every message goes to each channel on its own; one failing channel is logged and counted, never stops the
others or the ladder. SMTP runs in a worker thread (smtplib), the webhook with aiohttp: nothing blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import socket
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any

from layerboot.errors import LayerbootError

log = logging.getLogger("layerboot.monitor")
SMTP_TIMEOUT = 30.0


@dataclass(frozen=True)
class Message:
    subject: str
    body: str
    event: str                                    # opened | closed | notify | flag
    incident: dict[str, Any] = field(default_factory=dict)
    line: str = ""                                # what the log channel writes (default: the subject)

    def to_json(self) -> dict[str, Any]:
        return {"event": self.event, "subject": self.subject, "text": self.body, "incident": self.incident}


@dataclass(frozen=True)
class Outcome:
    channel: str
    ok: bool
    error: str = ""


def summarize(outcomes: list[Outcome]) -> str:
    """"email sent, webhook FAILED (...)" for an incident's history."""
    return ", ".join(f"{o.channel} {'sent' if o.ok else 'FAILED (' + o.error + ')'}" for o in outcomes)


class Notifier:
    def __init__(self, config: Any, *, counter: Any = None) -> None:
        self.config = config
        self.counter = counter                    # prometheus Counter (channel, result), when metrics run

    def available(self) -> set[str]:
        channels = {"log"}
        if self.config.notify_email_to:
            channels.add("email")
        if self.config.notify_webhook_url:
            channels.add("webhook")
        return channels

    async def send(self, channels: tuple[str, ...], message: Message) -> list[Outcome]:
        outcomes = []
        for channel in channels:
            try:
                if channel == "log":
                    (log.info if message.event == "closed" else log.warning)("%s", message.line or message.subject)
                elif channel == "email":
                    await asyncio.get_running_loop().run_in_executor(None, self._mail, message)
                elif channel == "webhook":
                    await self._webhook(message)
                else:
                    raise LayerbootError(f"unknown channel {channel!r}")
                outcomes.append(Outcome(channel, True))
            except (LayerbootError, OSError, smtplib.SMTPException) as err:
                text = getattr(err, "message", None) or str(err) or type(err).__name__
                log.warning("notification by %s failed: %s", channel, text)
                outcomes.append(Outcome(channel, False, text))
            if self.counter is not None:
                self.counter.labels(channel, "ok" if outcomes[-1].ok else "failed").inc()
        return outcomes

    # -- email ---------------------------------------------------------------------------------------------
    def _mail(self, message: Message) -> None:
        c = self.config
        mail = EmailMessage()
        sender = c.notify_email_from or f"layerbootd@{socket.getfqdn()}"
        mail["From"], mail["To"], mail["Subject"] = sender, ", ".join(c.notify_email_to), message.subject
        mail["Date"], mail["Message-ID"] = formatdate(localtime=False), make_msgid(domain=sender.split("@")[-1])
        mail["X-Layerboot-Event"] = message.event
        mail.set_content(message.body)
        try:
            if c.notify_smtp_security == "tls":
                server: smtplib.SMTP = smtplib.SMTP_SSL(c.notify_smtp_host, c.notify_smtp_port,
                                                        timeout=SMTP_TIMEOUT, context=ssl.create_default_context())
            else:
                server = smtplib.SMTP(c.notify_smtp_host, c.notify_smtp_port, timeout=SMTP_TIMEOUT)
            with server:
                if c.notify_smtp_security == "starttls":
                    server.starttls(context=ssl.create_default_context())
                if c.notify_smtp_user:
                    server.login(c.notify_smtp_user, _password(c.notify_smtp_password_file))
                server.send_message(mail)
        except smtplib.SMTPException as err:
            raise LayerbootError(f"SMTP server {c.notify_smtp_host}:{c.notify_smtp_port}: {err}") from None
        except OSError as err:
            raise LayerbootError(f"cannot send mail through {c.notify_smtp_host}:{c.notify_smtp_port}: "
                                 f"{err.strerror or err}") from None

    # -- webhook -------------------------------------------------------------------------------------------
    async def _webhook(self, message: Message) -> None:
        import aiohttp

        url = self.config.notify_webhook_url
        timeout = aiohttp.ClientTimeout(total=float(self.config.notify_webhook_timeout))
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                async with session.post(url, json=message.to_json()) as response:
                    if response.status >= 300:
                        raise LayerbootError(f"webhook {url} answered HTTP {response.status}")
        except (aiohttp.ClientError, TimeoutError) as err:
            raise LayerbootError(f"webhook {url}: {err or type(err).__name__}") from None


def _password(path: str) -> str:
    from layerboot.server.monitor.power import check_private

    if not path:
        raise LayerbootError("notify.smtp_user is set but notify.smtp_password_file is not")
    file = Path(path)
    try:
        check_private(file, "SMTP password file")
        return file.read_text(encoding="utf-8").strip()
    except OSError as err:
        raise LayerbootError(f"cannot read the SMTP password file {file}: {err.strerror}") from None
