#!/usr/bin/env bash
# Make what every node of the example region shares, in deploy/secrets/ (once; existing files are kept):
# a TLS certificate for the public name, SSH host keys, the token signing key, the SFTP account key, and
# passwords in deploy/.env for docker compose. Replace the self-signed certificate with a real one.
set -euo pipefail
cd "$(dirname "$0")"
NAME=${1:-files.emea.example.com}
mkdir -p secrets/tls secrets/keys secrets/trusted secrets/ssh
[ -s secrets/tls/key.pem ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj "/CN=$NAME" \
  -addext "subjectAltName=DNS:$NAME,DNS:localhost" -keyout secrets/tls/key.pem -out secrets/tls/cert.pem
[ -s secrets/keys/issuer-ed25519.pem ] || openssl genpkey -algorithm ed25519 -out secrets/keys/issuer-ed25519.pem
[ -s secrets/keys/sftp-accounts.key ] || head -c 32 /dev/urandom >secrets/keys/sftp-accounts.key
[ -s secrets/ssh/ssh_host_ed25519_key ] || ssh-keygen -q -t ed25519 -N "" -f secrets/ssh/ssh_host_ed25519_key
[ -s secrets/ssh/ssh_host_rsa_key ] || ssh-keygen -q -t rsa -b 3072 -N "" -f secrets/ssh/ssh_host_rsa_key
chmod 0644 secrets/*/*   # the containers' eftgw user (uid 10001) reads them; keep deploy/secrets private
if [ ! -s .env ]; then
  {
    echo "EFTGW_DB_PASSWORD=$(openssl rand -hex 24)"
    echo "EFTGW_S3_SECRET_KEY=$(openssl rand -hex 24)"
    echo "MINIO_ROOT_PASSWORD=$(openssl rand -hex 24)"
  } >.env
  chmod 600 .env
fi
echo "secrets in $(pwd)/secrets and $(pwd)/.env"
