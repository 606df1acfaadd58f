"""The capture kernel's command line built from /proc/cmdline."""

from __future__ import annotations

from kdumpy.setup.cmdline import (
    arch_append,
    build_capture_cmdline,
    param_name,
    split_cmdline,
)

# kdump-utils' x86_64 KDUMP_COMMANDLINE_APPEND (gen-kdump-sysconfig.sh)
X86 = ("irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off "
       "udev.children-max=2 panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr "
       "hest_disable cma=0 pcie_ports=compat")


def test_x86_64_drop_and_append():
    cur = ("BOOT_IMAGE=/boot/vmlinuz-6.1.0-27-amd64 root=UUID=ab-cd ro quiet splash "
           "crashkernel=2G-64G:256M,64G-:512M hugepages=64 hugepagesz=2M panic_on_warn=1 "
           "console=ttyS0,115200 resume=/dev/sda2 nr_cpus=8 panic=0")
    # kdumpy's capture image mounts only the target: the root goes, no systemd unit
    out = build_capture_cmdline(cur, arch="x86_64")
    assert out == "ro console=ttyS0,115200 " + X86
    # the system's own initramfs boots the root and runs the save unit
    out = build_capture_cmdline(cur, arch="x86_64", own_image=False)
    assert out == ("root=UUID=ab-cd ro console=ttyS0,115200 " + X86
                   + " systemd.unit=kdumpy-save.service")


def test_image_drops_every_root_parameter():
    cur = ("root=/dev/mapper/vg-root rootflags=subvol=@ rootfstype=btrfs rd.lvm.lv=vg/root "
           "rd.luks.uuid=luks-1 init=/lib/systemd/systemd rootwait console=ttyS0 "
           "swiotlb=65536 log_buf_len=1M ignition.firstboot slub_debug=FZ "
           "panic_on_taint=0x20,nousertaint panic_on_warn=1")
    assert build_capture_cmdline(cur, arch="x86_64") == "console=ttyS0 " + X86


def test_params_before_init_args():
    cur = "root=/dev/vda quiet -- --init-flag crashkernel=1"
    out = build_capture_cmdline(cur, arch="x86_64", own_image=False)
    assert out.endswith("systemd.unit=kdumpy-save.service -- --init-flag crashkernel=1")
    assert out.startswith("root=/dev/vda irqpoll")
    assert build_capture_cmdline(cur, arch="x86_64").endswith(
        "pcie_ports=compat -- --init-flag crashkernel=1")


def test_user_append_wins_and_remove():
    cur = "root=/dev/vda nosmt console=tty0"
    out = build_capture_cmdline(cur, arch="x86_64", remove=["nosmt"],
                                append=["panic=30 console=ttyS0", "nr-cpus=2"])
    words = out.split()
    assert "nosmt" not in words and "console=tty0" not in words
    assert "panic=10" not in words and "nr_cpus=1" not in words   # '-' equals '_'
    assert words[-3:] == ["panic=30", "console=ttyS0", "nr-cpus=2"]


def test_other_arches_from_kernel_docs():
    assert build_capture_cmdline("root=/dev/vda", arch="ppc64le").split()[0:3] == \
        ["maxcpus=1", "noirqdistrib", "reset_devices"]
    assert "cgroup_disable=memory" in build_capture_cmdline("", arch="s390x")
    assert build_capture_cmdline("", arch="aarch64") == (
        "irqpoll nr_cpus=1 reset_devices cgroup_disable=memory udev.children-max=2 panic=10 "
        "swiotlb=noforce cma=0")
    assert build_capture_cmdline("", arch="mips64").startswith("maxcpus=1 reset_devices panic=10")
    assert " ".join(arch_append("x86_64")) == X86


def test_quoted_values_stay_whole():
    cur = 'root=/dev/vda dyndbg="file foo.c +p" quiet'
    assert split_cmdline(cur) == ["root=/dev/vda", 'dyndbg="file foo.c +p"', "quiet"]
    assert 'dyndbg="file foo.c +p"' in build_capture_cmdline(cur, arch="x86_64")


def test_param_name():
    assert param_name("nr-cpus=2") == "nr_cpus"
    assert param_name("quiet") == "quiet"
