from twinlm.cli import app

app(prog_name="twinlm")
