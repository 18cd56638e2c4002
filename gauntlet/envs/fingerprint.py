"""Environment fingerprints: a scene may only be replayed by an env with the same physics.

The fingerprint hashes the canonicalised model XML (mesh/texture paths reduced to file names so that
two installs in different directories agree; attributes sorted) together with the settings that
change dynamics or observations (`EnvConfig.dynamics_settings`). The env computes it once per
configuration; `scenes check` groups scenes by configuration for that reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import xml.etree.ElementTree as ET

_PATH_ATTRS = {"file", "meshdir", "texturedir", "assetdir"}


def canonical_xml(xml: str) -> str:
    """Deterministic text of a MuJoCo XML: sorted attributes, no install paths, no whitespace."""
    root = ET.fromstring(xml)
    for el in root.iter():
        for attr in list(el.attrib):
            if attr in _PATH_ATTRS:
                el.attrib[attr] = os.path.basename(el.attrib[attr])
        el.attrib = dict(sorted(el.attrib.items()))
        if el.text is not None:
            el.text = el.text.strip() or None
        if el.tail is not None:
            el.tail = el.tail.strip() or None
    return ET.tostring(root, encoding="unicode")


def fingerprint_of(xml: str, settings: dict) -> str:
    """SHA-256 of the canonical model XML and the settings (JSON, sorted keys); hex digest."""
    h = hashlib.sha256()
    h.update(canonical_xml(xml).encode())
    h.update(json.dumps(settings, sort_keys=True).encode())
    return h.hexdigest()

