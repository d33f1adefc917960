import platform
import subprocess
import sys

import pytest

from dia.cli import main
from dia.device import set_cpu_memory, set_cpu_memory_from_env

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# Sets a mode in a fresh process (it is the process's for good), then counts the page faults
# of taking a 64 MiB tensor, filling it and freeing it, again and again after a warm-up.
FAULTS = """
import resource, sys, torch
from dia.device import cpu_memory, set_cpu_memory
before = cpu_memory()
in_force = set_cpu_memory(sys.argv[1])
again = set_cpu_memory(sys.argv[1])
other = "system" if sys.argv[1] != "system" else "keep"
try:
    set_cpu_memory(other)
    refused = False
except ValueError:
    refused = True
for _ in range(16):  # the heap grows for a while: each block sits a little off the last
    torch.ones(16 << 20)
start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.ones(16 << 20)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start
print(before, in_force, again, cpu_memory(), refused, faults)
"""


def faults_with(mode: str) -> tuple[list[str], int]:
    done = subprocess.run(
        [sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True
    )
    *fields, faults = done.stdout.split()
    return fields, int(faults)


@pytest.mark.skipif(not GLIBC, reason="keep needs glibc's malloc")
def test_keep_takes_large_blocks_from_the_system_once_not_at_every_use():
    fields, system = faults_with("system")
    assert fields == ["system", "system", "system", "system", "True"]
    fields, keep = faults_with("keep")
    assert fields == ["system", "keep", "keep", "keep", "True"]
    # 8 fills of 64 MiB are 131072 pages of 4 KiB: the system's way faults on each of them.
    assert system > 100_000
    assert keep < system / 20


def test_an_unknown_cpu_memory_mode_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="expected one of keep, system"):
        set_cpu_memory("fast")
    monkeypatch.setenv("DIA_CPU_MEMORY", "fast")
    with pytest.raises(ValueError, match="DIA_CPU_MEMORY='fast'"):
        set_cpu_memory_from_env()


def test_the_command_says_which_cpu_memory_setting_is_wrong(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("DIA_CPU_MEMORY", "fast")
    assert main(["evaluate", "--out", str(tmp_path)]) == 2
    assert "dia evaluate: error: DIA_CPU_MEMORY='fast'" in capsys.readouterr().err
