"""`sftpipe chat` driven through a pseudo-terminal, as a user types into it."""

import json
import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
import torch

TIMEOUT = 120


class Terminal:
    """A process whose stdin, stdout and stderr are a pty; `expect` reads until a text appears."""

    def __init__(self, args: list[str], cwd):
        self.master, slave = pty.openpty()
        self.process = subprocess.Popen(args, stdin=slave, stdout=slave, stderr=slave, cwd=cwd, close_fds=True)
        os.close(slave)
        self.seen = ""

    def expect(self, text: str) -> str:
        """Everything read up to and including `text`, which is then consumed."""
        deadline = time.monotonic() + TIMEOUT
        while text not in self.seen:
            ready, _, _ = select.select([self.master], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                pytest.fail(f"no {text!r} within {TIMEOUT}s; the terminal shows:\n{self.seen}")
            try:
                chunk = os.read(self.master, 4096).decode("utf-8", errors="replace")
            except OSError:  # the process closed the terminal
                pytest.fail(f"the process ended before {text!r}; the terminal shows:\n{self.seen}")
            self.seen += chunk
        before, _, self.seen = self.seen.partition(text)
        return before + text

    def type(self, line: str) -> None:
        os.write(self.master, line.encode() + b"\n")
        self.expect(line + "\r\n")  # the terminal's echo

    def exit_code(self) -> int:
        try:
            return self.process.wait(timeout=TIMEOUT)
        finally:
            os.close(self.master)


def _chat(model_dir, cwd) -> Terminal:
    return Terminal([sys.executable, "-m", "sftpipe.cli", "chat", "--model", str(model_dir), "--max-new-tokens",
                     "8", "--device", "cpu"], cwd)


def _reply(term: Terminal, line: str) -> str:
    """Type `line`, return the streamed reply shown between `model> ` and the next prompt."""
    term.type(line)
    term.expect("model> ")
    return term.expect("you> ").removesuffix("you> ").removesuffix("\r\n")


def test_chat_answers_keeps_turns_sets_system_saves_resets_and_quits(lora_run, tmp_path):
    cfg, result = lora_run
    term = _chat(result.run_dir, tmp_path)
    term.expect("you> ")
    first = _reply(term, "hello there")
    assert first.strip()
    term.type("/system Be brief.")
    term.expect("system message set")
    term.expect("you> ")
    second = _reply(term, "tell me more")
    term.type(f"/save {tmp_path / 'both.json'}")
    term.expect("saved 5 messages")
    term.expect("you> ")
    saved = json.loads((tmp_path / "both.json").read_text())["messages"]
    assert [m["role"] for m in saved] == ["system", "user", "assistant", "user", "assistant"]
    assert saved[0]["content"] == "Be brief."
    assert [saved[1]["content"], saved[3]["content"]] == ["hello there", "tell me more"]
    # what was streamed to the terminal is what the conversation keeps
    assert [saved[2]["content"], saved[4]["content"]] == [first.replace("\r\n", "\n"), second.replace("\r\n", "\n")]

    term.type("/reset")
    term.expect("conversation cleared")
    term.expect("you> ")
    term.type(f"/save {tmp_path / 'reset.json'}")
    term.expect("saved 1 messages")
    term.expect("you> ")
    assert json.loads((tmp_path / "reset.json").read_text())["messages"] == [{"role": "system",
                                                                              "content": "Be brief."}]
    term.type("/quit")
    assert term.exit_code() == 0


def test_chat_takes_a_checkpoint_dir_and_ends_at_end_of_input(lora_run, tmp_path):
    cfg, result = lora_run
    checkpoint = sorted((result.run_dir / "checkpoints").glob("checkpoint-*"))[-1]
    term = _chat(checkpoint, tmp_path)
    banner = term.expect("you> ")
    assert re.search(r"chatting with .*checkpoint-\d+", banner)
    assert _reply(term, "hello").strip()
    os.write(term.master, b"\x04")  # Ctrl-D: end of input
    assert term.exit_code() == 0


def test_a_streamed_reply_is_the_reply_eval_generates(lora_run):
    from transformers.generation.streamers import BaseStreamer

    from sftpipe.evaluate.generation import DecodingSettings, generate_samples, generate_streamed
    from sftpipe.models.loading import load_trained

    class Collect(BaseStreamer):
        def __init__(self):
            self.tokens = []

        def put(self, value):
            self.tokens.append(value.reshape(-1).tolist())

        def end(self):
            pass

    cfg, result = lora_run
    model, tokenizer = load_trained(result.run_dir, torch.device("cpu"))
    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
                    {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "What is a list?"}]
    settings = DecodingSettings(max_new_tokens=24)
    streamer = Collect()
    streamed = generate_streamed(model, tokenizer, conversation, settings, streamer)
    assert streamed == generate_samples(model, tokenizer, [conversation], settings)[0][0]
    assert sum(len(t) for t in streamer.tokens[1:]) == streamed.num_tokens  # the first put is the prompt
