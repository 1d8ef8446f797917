"""The fast OpenPGP engine: a streaming PKESK v3 + SEIPD v1 writer and reader.

Where it sits: :mod:`cryophile.pipeline.engines` defines the engine interface
(``encrypt(blocks, recipients) -> blocks``, ``decrypt(blocks, key, passphrase)
-> blocks``) and registers :class:`~cryophile.pipeline.fastpgp.engine.FastEngine`
under the name ``fast`` beside the pysequoia reference engine
(:mod:`cryophile.pipeline.openpgp`).

Contract: the messages written are exactly DESIGN.md §4 — one PKESK v3 per
recipient subkey that pysequoia selected (Curve25519 ECDH or RSA), then one
SEIPD v1 packet (AES-256, MDC) holding one binary literal packet, both framed
with 1 MiB partial body lengths — and are decrypted by gpg, sq, sqop and
pysequoia (the interop tests prove it for keys made by each). Anything valid
that this engine does not handle (other key algorithms or versions, S2K
forms, SEIPD v2, compressed or signed content) makes it hand the whole job to
the reference engine with a one-line notice; never a wrong result.

No cryptographic primitive is implemented here. AES-CFB, AES key wrap, X25519,
RSA PKCS#1 v1.5 and the NIST SP 800-56A concatenation KDF come from
``cryptography``; SHA-1/SHA-2 from ``hashlib``; randomness from the operating
system (``secrets``). Only the OpenPGP framing is ours: packet headers and
partial lengths, the PKESK and secret-key packet layouts, the MDC packet,
and the RFC 4880 S2K salting and iteration built on ``hashlib``.

Modules:

* :mod:`.packets`: packet headers, lengths, MPIs, key packets, a streaming reader.
* :mod:`.pkesk`: session keys, ECDH (RFC 6637) and RSA wrap/unwrap.
* :mod:`.secretkey`: secret key packets, S2K, unlocking.
* :mod:`.seipd`: the streaming SEIPD v1 writer and reader, in parallel stages.
* :mod:`.session`: reading a message's session key; the handover to the reference engine.
* :mod:`.engine`: :class:`FastEngine`, recipient matching, fallback.
"""
