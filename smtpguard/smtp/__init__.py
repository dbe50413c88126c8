"""SMTP text, no I/O: the grammar both sides of the relay speak.

Small pure modules shared by the inbound server and the delivery client (and by
the store and the policy where they check or quote SMTP text):

* :mod:`~smtpguard.smtp.status`: RFC 3463 enhanced status codes and RFC 5321
  reply codes, the one definition of their syntax;
* :mod:`~smtpguard.smtp.xtext`: RFC 3461 xtext and RFC 6533 utf-8-addr-xtext;
* :mod:`~smtpguard.smtp.params`: MAIL / RCPT paths and ESMTP parameters;
* :mod:`~smtpguard.smtp.data`: DATA framing (end of data, dot-stuffing, line endings);
* :mod:`~smtpguard.smtp.headers`: the trace header the relay writes and the
  ``Auto-Submitted`` header it reads;
* :mod:`~smtpguard.smtp.text`: making remote or stored text safe for a reply line.
"""
