"""Every key of nodepool.yaml and what it becomes under zuul-launcher.

``RULES`` gives, per key pattern (list indexes written ``[]``), where the
key's value goes in Zuul's objects or ``zuul.conf``, or why it has no
equivalent and what the operator has to decide.  The translation adds
notes for particular keys (a placeholder it had to write, a value it
could not carry); ``key_outcomes`` merges both over the keys actually
present in the file, so the report names every one of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from nodepool.config.errors import format_path


@dataclass(frozen=True)
class Rule:
    became: str
    # What the operator must decide or do; empty when the key carries over.
    decide: str = ""
    # Only a true value needs the decision (``pause: false`` changes nothing).
    decide_if_true: bool = False


@dataclass(frozen=True)
class Outcome:
    path: str       # the key in nodepool.yaml, e.g. providers[0].pools[0].max-servers
    became: str
    decide: str = ""


BUILDER = Rule("nothing: it configures upstream's nodepool-builder",
               "zuul-launcher builds no image itself: a Zuul image-build job "
               "(a job with image-build-name) builds type-zuul images; move this "
               "setting into that job")
ZOOKEEPER = Rule("nothing: zuul-launcher uses Zuul's own ZooKeeper connection "
                 "(zuul.conf [zookeeper])")
NOT_SERVED = Rule("nothing: this launcher does not serve this provider",
                  "upstream Nodepool or another launcher serves it; translate it there "
                  "or by hand")

# Keys whose values are free-form mappings: the key is reported, its
# contents go (or not) with it.
FREE_FORM = {"instance-properties", "dynamic-instance-properties", "node-attributes",
             "meta", "metadata", "env-vars"}

P = "providers[]"
POOL = f"{P}.pools[]"
PLABEL = f"{POOL}.labels[]"
CIMG = f"{P}.cloud-images[]"
PDISK = f"{P}.diskimages[]"

RULES: dict[str, Rule] = {
    "zookeeper-servers": ZOOKEEPER,
    "zookeeper-servers[].host": ZOOKEEPER,
    "zookeeper-servers[].port": ZOOKEEPER,
    "zookeeper-servers[].chroot": ZOOKEEPER,
    "zookeeper-tls": ZOOKEEPER,
    "zookeeper-tls.ca": ZOOKEEPER,
    "zookeeper-tls.cert": ZOOKEEPER,
    "zookeeper-tls.key": ZOOKEEPER,
    "zookeeper-timeout": ZOOKEEPER,
    "zookeeper-auth": Rule("nothing: zuul-launcher keeps its nodes in Zuul's own ZooKeeper "
                           "tree, with Zuul's credentials"),
    "zookeeper-auth.*": Rule("nothing: ACLs of this launcher's znodes"),
    "webapp": Rule("nothing: zuul-web shows zuul-launcher's nodes",
                   "keep this launcher's status API while it still serves labels; "
                   "point monitoring at zuul-web's node and label views afterwards"),
    "webapp.port": Rule("nothing (this launcher's status API)"),
    "webapp.listen_address": Rule("nothing (this launcher's status API)"),
    "labels": Rule("one `label` object per label"),
    "labels[].name": Rule("label.name"),
    "labels[].min-ready": Rule("label.min-ready"),
    "labels[].max-ready-age": Rule("label.max-ready-age"),
    "max-hold-age": Rule("nothing in Zuul's objects; the nearest is zuul.conf "
                         "[scheduler] max_hold_expiration (written there commented out)",
                         "Zuul caps how long autohold keeps nodes with "
                         "max_hold_expiration; uncomment it to keep this limit"),
    "tenant-resource-limits": Rule(
        "nothing: zuul-launcher 14.3 has no per-tenant resource limits",
        "limit the tenant with the providers' resource-limits (shared by every "
        "tenant using them) or the tenant's max-nodes-per-job (per job), or keep "
        "this tenant's labels on this launcher until Zuul has such limits"),
    "tenant-resource-limits[].*": Rule("nothing (see tenant-resource-limits)"),
    "diskimages": Rule("one `image` object of type zuul per diskimage a migrated label "
                       "boots"),
    "diskimages[].name": Rule("image.name (type zuul)"),
    "diskimages[].username": Rule("the section's images entry: username"),
    "diskimages[].python-path": Rule("the section's images entry: python-path"),
    "diskimages[].shell-type": Rule("the section's images entry: shell-type"),
    "diskimages[].parent": Rule("its values are merged into the images entries; the "
                                "builder's inheritance is the image-build job's business"),
    "diskimages[].abstract": Rule("nothing: an abstract diskimage only lends values"),
    "diskimages[].pause": Rule("nothing: zuul-launcher has no paused image",
                               "to stop new builds, stop running the image-build job",
                               decide_if_true=True),
    "elements-dir": BUILDER,
    "images-dir": BUILDER,
    "build-log-dir": BUILDER,
    "build-log-retention": BUILDER,
    "providers": Rule("one `section` per OpenStack provider, one `provider` per pool"),
    f"{P}.name": Rule("section.name"),
    f"{P}.driver": Rule("the zuul.conf connection's driver"),
    f"{P}.cloud": Rule("zuul.conf [connection \"<cloud>\"] cloud=, and section.connection"),
    f"{P}.region-name": Rule("section.region"),
    f"{P}.priority": Rule("nothing: zuul-launcher has no provider priority",
                          "Zuul spreads requests over every provider that has the label"),
    f"{P}.max-concurrency": Rule(
        "nothing: zuul-launcher has no cap on launches in flight per provider",
        "the connection's rate paces API calls; to cap the servers in flight use "
        "resource-limits.instances"),
    f"{P}.rate": Rule("zuul.conf connection rate= (calls per second: 1/rate)",
                      "Zuul's rate paces every API call of the connection, reads "
                      "included; check the value against the cloud's own limits"),
    f"{P}.read-rate": Rule("nothing: Zuul's connection rate covers reads too"),
    f"{P}.boot-timeout": Rule("section.label-defaults.boot-timeout"),
    f"{P}.launch-timeout": Rule("section.launch-timeout"),
    f"{P}.launch-retries": Rule("section.launch-attempts (at least 1)"),
    f"{P}.hostname-format": Rule("nothing: zuul-launcher names servers np<uuid prefix>",
                                 "fix tooling that parses server names"),
    f"{P}.clean-floating-ips": Rule("section.floating-ip-cleanup"),
    f"{P}.port-cleanup-interval": Rule("section.port-cleanup-interval"),
    f"{P}.image-upload-timeout": BUILDER,
    f"{P}.image-name-format": BUILDER,
    f"{P}.post-upload-hook": BUILDER,
    f"{P}.nodepool-id": Rule("nothing: zuul-launcher tells its servers apart by its own "
                             "metadata"),
    f"{P}.cloud-images": Rule("`image` objects of type cloud and the section's images"),
    f"{CIMG}.name": Rule("image.name (type cloud), and the section's images entry"),
    f"{CIMG}.image-id": Rule("the section's images entry: image-id"),
    f"{CIMG}.image-name": Rule("the section's images entry: image-id"),
    f"{CIMG}.username": Rule("the section's images entry: username"),
    f"{CIMG}.python-path": Rule("the section's images entry: python-path"),
    f"{CIMG}.shell-type": Rule("the section's images entry: shell-type"),
    f"{CIMG}.connection-type": Rule("the section's images entry: connection-type"),
    f"{CIMG}.connection-port": Rule("the section's images entry: connection-port"),
    f"{CIMG}.config-drive": Rule("the section's images entry: config-drive"),
    f"{P}.diskimages": Rule("the section's images (type zuul)"),
    f"{PDISK}.name": Rule("the section's images entry of the type-zuul image"),
    f"{PDISK}.pause": Rule("nothing: zuul-launcher has no paused upload",
                           "leave the image out of the section to keep it off this cloud",
                           decide_if_true=True),
    f"{PDISK}.meta": Rule("the section's images entry: tags (image properties at upload)"),
    f"{PDISK}.config-drive": Rule("the section's images entry: config-drive"),
    f"{PDISK}.connection-type": Rule("the section's images entry: connection-type"),
    f"{PDISK}.connection-port": Rule("the section's images entry: connection-port"),
    f"{P}.pools": Rule("one `provider` object per pool"),
    f"{POOL}.name": Rule("provider.name (<provider>-<pool>)"),
    f"{POOL}.priority": Rule("nothing: zuul-launcher has no pool priority"),
    f"{POOL}.max-servers": Rule("provider.resource-limits.instances"),
    f"{POOL}.max-cores": Rule("provider.resource-limits.cores"),
    f"{POOL}.max-ram": Rule("provider.resource-limits.ram"),
    f"{POOL}.max-volumes": Rule("provider.resource-limits.volumes"),
    f"{POOL}.max-volume-gb": Rule("provider.resource-limits.volume-gb"),
    f"{POOL}.networks": Rule("provider.label-defaults.networks"),
    f"{POOL}.security-groups": Rule("provider.label-defaults.security-groups"),
    f"{POOL}.availability-zones": Rule("provider.label-defaults.az"),
    f"{POOL}.auto-floating-ip": Rule("provider.label-defaults.auto-floating-ip"),
    f"{POOL}.host-key-checking": Rule("provider.label-defaults.host-key-checking"),
    f"{POOL}.ignore-provider-quota": Rule(
        "nothing: zuul-launcher always checks the cloud's quota",
        "zuul-launcher will not launch past the cloud's quota; keep resource-limits "
        "below it", decide_if_true=True),
    # Other attributes than executor-zone get a note from the translation.
    f"{POOL}.node-attributes": Rule("executor-zone: provider.label-defaults.executor-zone"),
    f"{POOL}.labels": Rule("provider.labels"),
    f"{PLABEL}.name": Rule("provider.labels entry name"),
    f"{PLABEL}.cloud-image": Rule("label.image and the provider.labels entry's image"),
    f"{PLABEL}.diskimage": Rule("label.image (type zuul) and the provider.labels entry's "
                                "image"),
    f"{PLABEL}.flavor-name": Rule("a `flavor` object of that name; the section's flavors "
                                  "entry flavor-name"),
    f"{PLABEL}.min-ram": Rule("a `flavor` object whose flavor-name you choose",
                              "zuul-launcher 14.3 picks flavors by name only: write the "
                              "name of a flavor with at least this much RAM"),
    f"{PLABEL}.key-name": Rule("provider.labels entry key-name"),
    f"{PLABEL}.console-log": Rule("nothing: zuul-launcher logs no console on a failed "
                                  "boot"),
    f"{PLABEL}.boot-from-volume": Rule("provider.labels entry boot-from-volume"),
    f"{PLABEL}.volume-size": Rule("provider.labels entry volume-size (with boot-from-volume)"),
    f"{PLABEL}.userdata": Rule("provider.labels entry userdata"),
    # Values that are not strings get a note from the translation.
    f"{PLABEL}.instance-properties": Rule("provider.labels entry tags (server metadata)"),
    f"{PLABEL}.dynamic-instance-properties": Rule(
        "nothing: zuul-launcher sets its own request metadata on servers",
        "tooling that reads these properties must read Zuul's zuul_* metadata"),
    f"{PLABEL}.networks": Rule("provider.labels entry networks"),
    f"{PLABEL}.host-key-checking": Rule("provider.labels entry host-key-checking"),
}
# The builder's keys of a top-level diskimages entry.
for _key in ("dib-cmd", "elements", "formats", "keep-formats", "delete-after-upload",
             "release", "rebuild-age", "build-timeout", "env-vars", "metadata"):
    RULES[f"diskimages[].{_key}"] = BUILDER


def pattern_of(path: list) -> str:
    return format_path(["[]" if isinstance(p, int) else p for p in path]).replace(".[]", "[]")


def walk_keys(data: Any, path: list | None = None) -> Iterator[tuple[list, Any]]:
    """The path and value of every mapping key in ``data``, parents before
    children; free-form mappings are not entered."""
    path = path or []
    if isinstance(data, dict):
        for key, value in data.items():
            here = path + [str(key)]
            yield here, value
            if str(key) not in FREE_FORM:
                yield from walk_keys(value, here)
    elif isinstance(data, list):
        for i, item in enumerate(data):
            yield from walk_keys(item, path + [i])


def rule_for(path: list) -> Rule | None:
    pattern = pattern_of(path)
    if pattern in RULES:
        return RULES[pattern]
    parent = pattern_of(path[:-1])
    return RULES.get(f"{parent}.*")


def key_outcomes(raw: dict, notes: dict[str, Rule]) -> list[Outcome]:
    """One outcome per key of ``raw``.  ``notes``: the translation's word on
    a particular key, or on everything under a path (a provider, a label
    of a pool); the note of the nearest path wins over the rule."""
    out = []
    for path, value in walk_keys(raw):
        rule = None
        for end in range(len(path), 0, -1):
            rule = notes.get(format_path(path[:end]))
            if rule is not None:
                break
        if rule is None:
            rule = rule_for(path) or Rule("nothing: a key this tool does not know",
                                          "translate it by hand")
        decide = "" if rule.decide_if_true and not value else rule.decide
        out.append(Outcome(format_path(path), rule.became, decide))
    return out
