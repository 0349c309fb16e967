"""Every command in README's "Multi-GPU and clusters" section parses as its launcher reads it.

torchrun and accelerate lines go through those tools' own argument parsers (so a misspelled or removed flag
fails here), and each must start `sftpipe.cli train` on a config that exists. sbatch lines must name the
shipped script and a config that exists. A line with any other command fails, so a new kind of command in
that section needs a check here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SECTION = "## Multi-GPU and clusters"
# what configs/accelerate/ holds (the FSDP work ships them): the README may only point at these
ACCELERATE_CONFIGS = {"ddp.yaml", "fsdp.yaml", "fsdp_4xa40.yaml"}


def section_commands() -> list[list[str]]:
    """The section's ```bash lines as argv lists (`a && b` as two), environment assignments and comments
    removed."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count(SECTION) == 1, f"README.md needs exactly one '{SECTION}' section"
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        for line in block.splitlines():
            for part in line.split(" && "):
                argv = shlex.split(part, comments=True)
                while argv and re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", argv[0]):
                    argv.pop(0)
                if argv:
                    commands.append(argv)
    return commands


COMMANDS = section_commands()


def check_sftpipe_train(module: bool, script: str, args: list[str]) -> None:
    assert module and script == "sftpipe.cli", "launch `-m sftpipe.cli`, which every install has"
    assert args[0] == "train" and (REPO / args[1]).is_file(), args


def check_torchrun(argv: list[str]) -> None:
    from torch.distributed.run import get_args_parser

    args = get_args_parser().parse_args(argv[1:])
    check_sftpipe_train(args.module, args.training_script, args.training_script_args)
    if args.nnodes not in ("1", "1:1"):  # several machines: they must meet somewhere
        assert args.rdzv_backend == "c10d" and re.fullmatch(r"[\w.-]+:\d+", args.rdzv_endpoint), argv


def check_accelerate(argv: list[str]) -> None:
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import launch_command_parser

    assert argv[1] == "launch", argv
    args = launch_command_parser().parse_args(argv[2:])
    check_sftpipe_train(args.module, args.training_script, args.training_script_args)
    config = Path(args.config_file)
    assert config.parent == Path("configs/accelerate") and config.name in ACCELERATE_CONFIGS, argv
    if (REPO / config).is_file():  # until the FSDP work is merged, only the name is checked
        load_config_from_file(str(REPO / config))
    if args.num_machines and args.num_machines > 1:
        assert args.main_process_ip and args.machine_rank is not None and args.num_processes, argv


def check_sbatch(argv: list[str]) -> None:
    script = next(i for i, a in enumerate(argv) if a.endswith(".sbatch"))
    assert argv[script] == "configs/slurm/sftpipe.sbatch" and (REPO / argv[script]).is_file()
    assert (REPO / argv[script + 1]).is_file(), f"{argv[script + 1]}: no such config"


def check_scontrol(argv: list[str]) -> None:
    assert argv[1] == "requeue" and argv[2].isdigit(), argv


def check_sudo(argv: list[str]) -> None:
    assert argv[1] == "bash" and (REPO / argv[2]).is_file() and argv[2].startswith("scripts/"), argv


def check_pytest(argv: list[str]) -> None:
    marker = argv[argv.index("-m") + 1]
    assert f'"{marker}: ' in (REPO / "pyproject.toml").read_text(), f"marker {marker} is not declared"
    assert all((REPO / a).exists() for a in argv[1:] if a.startswith("tests/")), argv


CHECKS = {"torchrun": check_torchrun, "accelerate": check_accelerate, "sbatch": check_sbatch,
          "scontrol": check_scontrol, "sudo": check_sudo, "pytest": check_pytest}


def test_the_section_shows_every_launcher_and_multi_node_forms():
    tools = [argv[0] for argv in COMMANDS]
    assert {"torchrun", "accelerate", "sbatch"} <= set(tools), tools
    assert any(a[0] == "torchrun" and "--nnodes" in a for a in COMMANDS)
    assert any(a[0] == "accelerate" and "--num_machines" in a for a in COMMANDS)


@pytest.mark.parametrize("argv", COMMANDS, ids=[" ".join(a)[:60] for a in COMMANDS])
def test_command_parses(argv):
    assert argv[0] in CHECKS, f"no check for `{argv[0]}`: add one to this test"
    CHECKS[argv[0]](argv)


@pytest.mark.parametrize(("argv", "why"), [
    (["torchrun", "--gpus-per-node", "4", "-m", "sftpipe.cli", "train", "configs/haskell_lora.yaml"], "flag"),
    (["torchrun", "--nnodes", "2", "-m", "sftpipe.cli", "train", "configs/haskell_lora.yaml"], "rendezvous"),
    (["torchrun", "--nproc-per-node", "4", "-m", "sftpipe.cli", "train", "configs/nope.yaml"], "config"),
    (["accelerate", "launch", "--config_file", "configs/accelerate/zero3.yaml", "-m", "sftpipe.cli", "train",
      "configs/haskell_lora.yaml"], "accelerate config"),
    (["accelerate", "launch", "--config_file", "configs/accelerate/ddp.yaml", "--num_machines", "2",
      "--num_processes", "8", "-m", "sftpipe.cli", "train", "configs/haskell_lora.yaml"], "main process"),
    (["sbatch", "configs/slurm/other.sbatch", "configs/haskell_lora.yaml"], "script"),
    (["pytest", "-m", "slurmm", "tests/integration/test_slurm.py"], "marker"),
])
def test_the_checks_catch_a_broken_command(argv, why):
    with pytest.raises((AssertionError, SystemExit)):
        CHECKS[argv[0]](argv)
