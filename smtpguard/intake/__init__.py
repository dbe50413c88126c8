"""Bounce intake: what comes back after delivery, tied to what was sent.

``verp`` signs return paths so a returned DSN can be trusted about one recipient;
``exports`` reads and writes the suppression exports of ESPs (Amazon SES, Mailgun,
SendGrid, Postmark); ``webhooks/`` receives their event webhooks; ``esp`` turns an
ESP's bounce record into a classifier :class:`~smtpguard.classify.Verdict`.
"""
