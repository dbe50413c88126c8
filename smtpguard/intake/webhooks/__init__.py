"""ESP event webhooks: Amazon SES (via SNS), SendGrid, Postmark -> classifier verdicts.

``app`` is the aiohttp application (one route per configured provider); ``sns`` and
``fetch`` verify Amazon SNS messages; ``ses``, ``sendgrid`` and ``postmark`` each
authenticate one provider's requests and turn its events into verdicts.
"""
