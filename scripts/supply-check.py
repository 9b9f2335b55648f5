#!/usr/bin/env python3
"""Independent checks of what archforge attaches to images, for the tests and `make demo`.

Nothing here shares code with archforge: statements are parsed by the in-toto project's own
`in-toto-attestation` package (its protobuf definitions, strictly: an unknown field fails),
DSSE signatures are checked with `cryptography`, and cosign's encrypted key format is
written with hashlib's scrypt and PyNaCl's secretbox, as go-securesystemslib does.

  supply-check.py provenance --key cosign.pub DIR...
      DIR is a `skopeo copy ... dir:DIR` of an `sha256-<hex>.att` tag. Verifies each DSSE
      envelope with the key, parses the statement and its SLSA v1 provenance predicate, and
      prints one line per attestation: provenance <subject> <platform|index> commit <sha>.
  supply-check.py signatures --key cosign.pub --repo HOST/REPO DIR
      DIR is a `skopeo copy [--all] docker://... dir:DIR` made with a registries.d that has
      `use-sigstore-attachments: true`: containers/image has read the cosign `.sig` tags and
      stored each signature as signature-N (and <hex>.signature-N for an index's images).
      Checks, as containers/image's sigstoreSigned policy does with matchRepository, that
      the image and every image of an index carry a signature by the key whose payload names
      that manifest's digest and HOST/REPO. Exits non-zero naming the first failure.
  COSIGN_PASSWORD=... supply-check.py cosign-key --key OUT --pub OUT
      Writes a new P-256 key in cosign's ENCRYPTED SIGSTORE PRIVATE KEY format, encrypted
      with $COSIGN_PASSWORD (as cosign reads it: never in argv), and its public key.
"""

import argparse
import base64
import hashlib
import json
import os
import sys

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
from in_toto_attestation.v1.statement import Statement

DSSE = "application/vnd.dsse.envelope.v1+json"
IN_TOTO = "application/vnd.in-toto+json"
SLSA_V1 = "https://slsa.dev/provenance/v1"


def fail(message):
    print(f"supply-check: {message}", file=sys.stderr)
    sys.exit(1)


def pae(payload_type, payload):
    t = payload_type.encode()
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(payload), payload)


def check_statement(payload):
    # Strict parse: a field the in-toto Statement v1 schema does not have is an error.
    pb = json_format.Parse(payload, statement_pb2.Statement())
    Statement.copy_from_pb(pb).validate()
    if pb.predicate_type != SLSA_V1:
        fail(f"predicateType is {pb.predicate_type!r}, not {SLSA_V1}")
    predicate = json_format.MessageToDict(pb.predicate)
    # Strict parse against SLSA v1's own proto (timestamps must be RFC 3339).
    provenance = json_format.ParseDict(predicate, provenance_pb2.Provenance())
    definition = provenance.build_definition
    if not definition.build_type:
        fail("buildDefinition.buildType is empty")
    if not definition.external_parameters:
        fail("buildDefinition.externalParameters is empty")
    for dependency in definition.resolved_dependencies:
        ResourceDescriptor.copy_from_pb(dependency).validate()
    if not provenance.run_details.builder.id:
        fail("runDetails.builder.id is empty")
    metadata = provenance.run_details.metadata
    if not metadata.invocation_id or not metadata.HasField("started_on"):
        fail("runDetails.metadata needs invocationId and startedOn")
    commits = [
        d.digest["gitCommit"]
        for d in definition.resolved_dependencies
        if "gitCommit" in d.digest
    ]
    if len(commits) != 1:
        fail(f"expected one git commit among resolvedDependencies, found {len(commits)}")
    platform = predicate["buildDefinition"]["externalParameters"].get("platform", "index")
    return pb, platform, commits[0]


def provenance(args):
    with open(args.key, "rb") as f:
        key = serialization.load_pem_public_key(f.read())
    for directory in args.dirs:
        with open(os.path.join(directory, "manifest.json")) as f:
            manifest = json.load(f)
        layers = [l for l in manifest.get("layers", []) if l.get("mediaType") == DSSE]
        if not layers:
            fail(f"{directory}: no DSSE layer")
        for layer in layers:
            hex_digest = layer["digest"].split(":", 1)[1]
            with open(os.path.join(directory, hex_digest), "rb") as f:
                blob = f.read()
            if hashlib.sha256(blob).hexdigest() != hex_digest:
                fail(f"{directory}: layer digest mismatch")
            envelope = json.loads(blob)
            if envelope["payloadType"] != IN_TOTO:
                fail(f"{directory}: payloadType {envelope['payloadType']!r}")
            payload = base64.b64decode(envelope["payload"])
            verified = False
            for signature in envelope["signatures"]:
                try:
                    key.verify(
                        base64.b64decode(signature["sig"]),
                        pae(envelope["payloadType"], payload),
                        ec.ECDSA(hashes.SHA256()),
                    )
                    verified = True
                except InvalidSignature:
                    pass
            if not verified:
                fail(f"{directory}: no DSSE signature verifies with {args.key}")
            pb, platform, commit = check_statement(payload)
            for subject in pb.subject:
                print(
                    f"provenance {platform:<14} {subject.name}@sha256:{subject.digest['sha256']}"
                    f"  commit {commit}"
                )


SIMPLE_SIGNING = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGSTORE_PREFIX = b"\x00sigstore-json\n"


def check_signed(directory, prefix, key, repo):
    """Why the manifest `prefix`manifest.json in `directory` is not signed, or None."""
    with open(os.path.join(directory, prefix + "manifest.json"), "rb") as f:
        manifest = f.read()
    digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    why = f"{digest}: no sigstore signature was copied"
    n = 1
    while os.path.exists(os.path.join(directory, f"{prefix}signature-{n}")):
        with open(os.path.join(directory, f"{prefix}signature-{n}"), "rb") as f:
            blob = f.read()
        n += 1
        if not blob.startswith(SIGSTORE_PREFIX):
            why = f"{digest}: signature is not a sigstore signature"
            continue
        signature = json.loads(blob[len(SIGSTORE_PREFIX):])
        if signature.get("mimeType") != SIMPLE_SIGNING:
            why = f"{digest}: signature has MIME type {signature.get('mimeType')!r}"
            continue
        payload = base64.b64decode(signature["payload"])
        try:
            key.verify(
                base64.b64decode(signature["annotations"]["dev.cosignproject.cosign/signature"]),
                payload,
                ec.ECDSA(hashes.SHA256()),
            )
        except (InvalidSignature, KeyError, ValueError):
            why = f"{digest}: signature does not verify with the key"
            continue
        critical = json.loads(payload)["critical"]
        if critical["type"] != "cosign container image signature":
            why = f"{digest}: payload type {critical['type']!r}"
        elif critical["image"]["docker-manifest-digest"] != digest:
            why = f"{digest}: payload names {critical['image']['docker-manifest-digest']}"
        elif critical["identity"]["docker-reference"] != repo:
            why = f"{digest}: payload names {critical['identity']['docker-reference']}"
        else:
            return None
    return why


def signatures(args):
    with open(args.key, "rb") as f:
        key = serialization.load_pem_public_key(f.read())
    why = check_signed(args.dir, "", key, args.repo)
    if why:
        fail(why)
    with open(os.path.join(args.dir, "manifest.json")) as f:
        top = json.load(f)
    checked = 1
    for child in top.get("manifests", []):
        prefix = child["digest"].split(":", 1)[1] + "."
        if os.path.exists(os.path.join(args.dir, prefix + "manifest.json")):
            why = check_signed(args.dir, prefix, key, args.repo)
            if why:
                fail(why)
            checked += 1
    print(f"signatures verified: {checked} manifest(s)")


def cosign_key(args):
    private = ec.generate_private_key(ec.SECP256R1())
    der = private.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    import nacl.secret
    import nacl.utils

    salt = os.urandom(32)
    n, r, p = 32768, 8, 1
    box_key = hashlib.scrypt(
        os.environ["COSIGN_PASSWORD"].encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=64 << 20
    )
    nonce = nacl.utils.random(nacl.secret.SecretBox.NONCE_SIZE)
    ciphertext = nacl.secret.SecretBox(box_key).encrypt(der, nonce).ciphertext
    document = {
        "kdf": {
            "name": "scrypt",
            "params": {"N": n, "r": r, "p": p},
            "salt": base64.b64encode(salt).decode(),
        },
        "cipher": {"name": "nacl/secretbox", "nonce": base64.b64encode(nonce).decode()},
        "ciphertext": base64.b64encode(ciphertext).decode(),
    }
    body = base64.encodebytes(json.dumps(document).encode()).decode()
    label = "ENCRYPTED SIGSTORE PRIVATE KEY"
    with open(args.key, "w") as f:
        f.write(f"-----BEGIN {label}-----\n{body}-----END {label}-----\n")
    public = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with open(args.pub, "wb") as f:
        f.write(public)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("provenance")
    p.add_argument("--key", required=True)
    p.add_argument("dirs", nargs="+")
    p.set_defaults(run=provenance)
    s = commands.add_parser("signatures")
    s.add_argument("--key", required=True)
    s.add_argument("--repo", required=True)
    s.add_argument("dir")
    s.set_defaults(run=signatures)
    k = commands.add_parser("cosign-key")
    k.add_argument("--key", required=True)
    k.add_argument("--pub", required=True)
    k.set_defaults(run=cosign_key)
    args = parser.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
