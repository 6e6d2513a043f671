#!/usr/bin/env bash
# Installs what the integration tests need, once: s3s-fs (with cargo) and
# moto's server (in a Python venv under .ci/venv). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

S3S_FS_VERSION=0.14.1
s3s_fs="$(command -v s3s-fs || true)"
[ -n "$s3s_fs" ] || s3s_fs="$HOME/.cargo/bin/s3s-fs"
if [ ! -x "$s3s_fs" ] || ! "$s3s_fs" --version 2>/dev/null | grep -q "$S3S_FS_VERSION"; then
    echo "setup: installing s3s-fs $S3S_FS_VERSION with cargo (a few minutes, once)"
    cargo install s3s-fs --version "$S3S_FS_VERSION" --features binary --locked
fi

apt_install() {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "setup: installing $* with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        echo "setup: please install $* (apt-get install $*)" >&2
        exit 1
    fi
}

if [ ! -x .ci/venv/bin/moto_server ]; then
    command -v python3 >/dev/null || apt_install python3 python3-venv
    rm -rf .ci/venv
    if ! python3 -m venv .ci/venv >/dev/null 2>&1; then
        # Debian's python3 needs python3-venv for ensurepip.
        rm -rf .ci/venv
        apt_install python3-venv
        python3 -m venv .ci/venv
    fi
    echo "setup: installing moto's server in .ci/venv"
    .ci/venv/bin/pip install --quiet --disable-pip-version-check 'moto[server]>=5,<6'
fi
# Without these moto computes CRC32 where CRC32C and CRC64NVME are asked
# for (--checksum-algorithm).
if ! .ci/venv/bin/python -c 'import crc32c, awscrt' 2>/dev/null; then
    echo "setup: installing moto's checksum libraries in .ci/venv"
    .ci/venv/bin/pip install --quiet --disable-pip-version-check 'crc32c>=2,<3' 'awscrt<1'
fi
# The TLS test makes a private CA with the openssl command.
command -v openssl >/dev/null || apt_install openssl

echo "setup: s3s-fs $("$s3s_fs" --version | awk '{print $2}'), moto $(.ci/venv/bin/python -c 'import moto; print(moto.__version__)')"
