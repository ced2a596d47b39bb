#!/bin/bash
# layerboot dracut module: the initramfs's /init is layerboot's Python stage1 (no dracut shell init, no udev,
# no systemd). Built by 'layerboot initrd build' (build/initrd.py), which prepares the payload and calls
#   dracut -m layerboot --no-hostonly --kver V --kmoddir M ...
# with these variables in the environment:
#   LAYERBOOT_PAYLOAD    directory copied into the image: /init, stage1 and the stdlib subset as precompiled
#                        .pyc, /etc/layerboot/signing.pub
#   LAYERBOOT_PYTHON     the interpreter to install (default /usr/bin/python3.11, from python3-minimal)
#   LAYERBOOT_LIBRARIES  extension modules (.so) stage1 imports; installed with their shared libraries
#   LAYERBOOT_BUSYBOX    a static busybox (mount, switch_root, the emergency shell; default /bin/busybox)
#   LAYERBOOT_DRIVERS    kernel modules to install (build/drivers.py: a driver set plus --add/--omit-drivers)

check() {
    # Only when asked for by name: this module replaces the whole boot flow.
    return 255
}

depends() {
    return 0
}

installkernel() {
    # LAYERBOOT_DRIVERS: the driver set build/drivers.py resolved (module names and =dir entries); stage1
    # loads what the hardware asks for. Firmware the modules name is copied from dracut's fw_dir.
    if [[ -z "$LAYERBOOT_DRIVERS" ]]; then
        derror "layerboot: LAYERBOOT_DRIVERS is empty; build with 'layerboot initrd build'"
        return 1
    fi
    # shellcheck disable=SC2086 # a list of names
    hostonly='' instmods $LAYERBOOT_DRIVERS
}

install() {
    if [[ ! -f "$LAYERBOOT_PAYLOAD/init" ]]; then
        derror "layerboot: LAYERBOOT_PAYLOAD does not hold a stage1 payload; build with 'layerboot initrd build'"
        return 1
    fi
    local python="${LAYERBOOT_PYTHON:-/usr/bin/python3.11}"
    local busybox="${LAYERBOOT_BUSYBOX:-/bin/busybox}"
    inst_binary "$python" || return 1
    inst_simple "$busybox" /bin/busybox || return 1
    local so
    for so in $LAYERBOOT_LIBRARIES; do
        inst_library "$so" || return 1
        # and the libraries it links (_hashlib: libcrypto): dracut's lazy pass only follows files with an
        # executable bit, and Debian installs extension modules 0644.
        "$DRACUT_INSTALL" ${initdir:+-D "$initdir"} -R "$so" || return 1
    done
    cp -a "$LAYERBOOT_PAYLOAD"/. "$initdir"/ || return 1
    chmod 0755 "$initdir/init"
    # Busybox applets for the emergency shell, where nothing else provides the name.
    local applet dir taken
    for applet in $("$busybox" --list); do
        taken=
        for dir in bin sbin usr/bin usr/sbin; do
            if [[ -e "$initdir/$dir/$applet" || -L "$initdir/$dir/$applet" ]]; then
                taken=1
                break
            fi
        done
        [[ $taken ]] || ln -s busybox "$initdir/bin/$applet"
    done
}
