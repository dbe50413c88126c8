"""smtpguard: a relay beside Postfix that learns from every bounce."""

__version__ = "0.1.0"
