"""Evaluate (`twinlm eval`): base vs tuned and each checkpoint of a run, scored on the held-out data.

perplexity.py (held-out target tokens), style.py (style fidelity and indistinguishability),
replies.py (replies in context and probe conversations), documents.py (held-out questions, judge),
weights.py (which weights a run has, loaded), report.py (HTML + JSON), evaluate.py (the verb).
Heavy libraries (torch, transformers, matplotlib, scikit-learn) are imported where they are used.
"""
