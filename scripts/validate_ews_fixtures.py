#!/usr/bin/env python3
"""CI-only: validate every EWS fixture body against the official EWS schema.

The schema in ../shared/reference/ews-schema needs two fixes before libxml2 compiles it (see
its SOURCE.md); they are applied to a temporary copy, never to the originals:
  1. types.xsd imports the xml namespace without a schemaLocation: a minimal xml.xsd is
     written beside the copy and the import points at it;
  2. ArrayOfTransitionsType lists substitution-group members beside their head, which breaks
     Unique Particle Attribution: the four particles become one reference to t:Transition.

For each fixture whose manifest has `ews_operation` (or whose request goes to /EWS/), the first
element child of soap:Body of request.xml and response.xml is validated against messages.xsd
(SOAP faults are skipped: their detail is not EWS schema content). Exits 1 on any failure.
"""
import pathlib
import re
import sys
import tempfile

from lxml import etree

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCHEMA = ROOT.parent / "shared" / "reference" / "ews-schema"
SOAP = {"http://schemas.xmlsoap.org/soap/envelope/", "http://www.w3.org/2003/05/soap-envelope"}

XML_XSD = """<?xml version="1.0"?>
<xs:schema xmlns:xs="http://www.w3.org/2001/XMLSchema" targetNamespace="http://www.w3.org/XML/1998/namespace" xml:lang="en">
  <xs:attribute name="lang" type="xs:language"/>
  <xs:attribute name="space"><xs:simpleType><xs:restriction base="xs:NCName"><xs:enumeration value="default"/><xs:enumeration value="preserve"/></xs:restriction></xs:simpleType></xs:attribute>
  <xs:attribute name="base" type="xs:anyURI"/>
  <xs:attribute name="id" type="xs:ID"/>
</xs:schema>
"""


def patched_schema(tmp: pathlib.Path) -> etree.XMLSchema:
    for name in ("messages.xsd", "types.xsd"):
        text = (SCHEMA / name).read_bytes().decode("utf-8-sig")
        if name == "types.xsd":
            text = text.replace(
                '<xs:import namespace="http://www.w3.org/XML/1998/namespace"/>',
                '<xs:import namespace="http://www.w3.org/XML/1998/namespace" schemaLocation="xml.xsd"/>',
            )
            text, n = re.subn(
                r'(<xs:complexType name="ArrayOfTransitionsType">\s*<xs:sequence>).*?(</xs:sequence>)',
                r'\1<xs:element ref="t:Transition" minOccurs="0" maxOccurs="unbounded"/>\2',
                text,
                flags=re.S,
            )
            assert n == 1, "ArrayOfTransitionsType not found"
        (tmp / name).write_text(text, encoding="utf-8")
    (tmp / "xml.xsd").write_text(XML_XSD, encoding="utf-8")
    return etree.XMLSchema(etree.parse(str(tmp / "messages.xsd")))


def payload(path: pathlib.Path):
    doc = etree.parse(str(path))
    root = doc.getroot()
    body = next((c for c in root if etree.QName(c).localname == "Body" and etree.QName(c).namespace in SOAP), None)
    if body is None:
        return None
    child = next((c for c in body if isinstance(c.tag, str)), None)
    if child is None or etree.QName(child).localname == "Fault":
        return None
    return etree.fromstring(etree.tostring(child))


def main() -> int:
    failures = 0
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        schema = patched_schema(pathlib.Path(tmp))
        for manifest in sorted((ROOT / "fixtures" / "exchange").glob("*/fixture.toml")):
            text = manifest.read_text()
            if "ews_operation" not in text and "/EWS/" not in text:
                continue
            for name in ("request.xml", "response.xml"):
                path = manifest.parent / name
                if not path.exists():
                    continue
                element = payload(path)
                if element is None:
                    continue
                checked += 1
                if not schema.validate(element):
                    failures += 1
                    print(f"INVALID {path.relative_to(ROOT)}:")
                    for error in schema.error_log:
                        print(f"  line {error.line}: {error.message}")
    print(f"EWS schema check: {checked} bodies, {failures} invalid")
    return 1 if failures or checked == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
