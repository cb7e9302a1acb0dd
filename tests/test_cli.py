"""The CLI driven as a person would: one-shot generate, chat through a pipe,
and interactive chat on a pseudo-terminal."""

import subprocess
import sys

import pytest

from htsparse_llama import Model

CLI = [sys.executable, "-m", "htsparse_llama"]


def run_cli(*args, stdin=None, timeout=180):
    return subprocess.run([*CLI, *args], input=stdin, capture_output=True, text=True, timeout=timeout)


def test_help_lists_commands_and_options():
    top = run_cli("--help")
    assert top.returncode == 0
    for cmd in ("generate", "chat", "bench"):
        assert cmd in top.stdout
    gen = run_cli("generate", "--help")
    for opt in ("--threads", "--ctx", "--device", "--seed", "--temp", "--prompt", "--model"):
        assert opt in gen.stdout


def test_generate_prints_the_api_greedy_answer(smollm_gguf):
    question = "What is the capital of France?"
    model = Model(smollm_gguf, n_ctx=512, n_threads=2)
    s = model.session()
    s.add_message("user", question)
    expected = s.generate(max_tokens=24, temperature=0, stream=False)
    assert "Paris" in expected

    proc = run_cli("generate", "-m", smollm_gguf, "-p", question, "--temp", "0", "-n", "24", "-t", "2", "--ctx", "512")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected + "\n"


def test_seeded_sampling_is_reproducible(smollm_gguf):
    args = (
        "generate",
        "-m",
        smollm_gguf,
        "-p",
        "Tell me a story.",
        "--temp",
        "1.0",
        "--seed",
        "42",
        "-n",
        "20",
        "-t",
        "2",
    )
    a, b = run_cli(*args), run_cli(*args)
    assert a.returncode == b.returncode == 0
    assert a.stdout == b.stdout and len(a.stdout.strip()) > 0


def test_chat_through_a_pipe_with_reset(smollm_gguf):
    stdin = "What is the capital of France?\n/reset\nWhat is the capital of France?\n/exit\nnot read\n"
    proc = run_cli("chat", "-m", smollm_gguf, "--temp", "0", "-n", "24", "-t", "2", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    answers = proc.stdout.strip().split("\n")
    # After /reset the same question gets the same greedy answer: the history was forgotten.
    assert len(answers) == 2 and answers[0] == answers[1] and "Paris" in answers[0]
    assert "(conversation reset)" in proc.stderr


def test_chat_remembers_the_conversation(smollm_gguf):
    stdin = "My name is Zorblax.\nWhat is my name?\n"
    proc = run_cli("chat", "-m", smollm_gguf, "--temp", "0", "-n", "40", "-t", "2", stdin=stdin)
    assert proc.returncode == 0, proc.stderr
    assert "Zorblax" in proc.stdout.split("\n", 1)[1]


def test_interactive_chat_on_a_terminal(smollm_gguf):
    pexpect = pytest.importorskip("pexpect")
    child = pexpect.spawn(
        CLI[0],
        [*CLI[1:], "chat", "-m", smollm_gguf, "--temp", "0", "-n", "24", "-t", "2"],
        encoding="utf-8",
        timeout=120,
    )
    try:
        child.expect("/reset")  # the banner names the commands
        child.expect("> ")
        child.sendline("What is the capital of France?")
        child.expect("Paris")
        child.expect("> ")
        child.sendline("/nonsense")
        child.expect("unknown command")
        child.expect("> ")
        child.sendline("/reset")
        child.expect(r"\(conversation reset\)")
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
