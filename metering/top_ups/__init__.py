"""Prepaid top-ups (SPEC §3, §8): credit bought through a Stripe PaymentIntent, credited on its signed webhook.

The credit itself is ``metering.credit_grants``'s (owner of ``credit_grants``); this package talks to Stripe.
"""
