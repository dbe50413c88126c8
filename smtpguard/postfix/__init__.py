"""smtpguard inside Postfix: the milter and the policy delegation service.

Thin adapters over the platform's seams (:mod:`smtpguard.policy`): both ask
``RecipientPolicy.check`` for every recipient, and the milter hands incoming
bounces to ``VerdictSink.accept``; no SQL and no SMTP parsing here.

* :mod:`~smtpguard.postfix.milter_app` - ``smtpguard milter`` (pymilter);
* :mod:`~smtpguard.postfix.policy_server` and
  :mod:`~smtpguard.postfix.policy_protocol` - ``smtpguard policy`` (asyncio);
* :mod:`~smtpguard.postfix.answers` - a Decision in each protocol's words;
* :mod:`~smtpguard.postfix.bounces` - the milter's end-of-message parts;
* :mod:`~smtpguard.postfix.background` - an event loop for the async sink in
  libmilter's threads; :mod:`~smtpguard.postfix.metrics`.

Named ``postfix``, not ``milter``: pymilter's C module is the top-level
``milter`` (see ``milter/README.md``).
"""
