"""Operator tools: checks and scans an admin runs by hand or from cron.

``doctor`` (a domain's DNS and reputation: MX, SPF, DKIM, DMARC, PTR, DNSBL)
and ``logscan`` (bounces and deferrals in Postfix, Exim and Sendmail logs).
Each module does one job; the CLI modules in ``smtpguard.cli`` only parse
arguments, call these and render the results.
"""
