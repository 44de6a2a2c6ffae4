"""Hosted fine-tuning (opt-in): the Mistral fine-tuning API as a second training backend.

Nothing here runs unless asked (`twinlm train --backend mistral-api`), and nothing is sent before the
dataset is exported, checked against the API's limits and the token budget, and the user confirmed
(or passed --yes). The API key comes only from the environment (MISTRAL_API_KEY).
"""
