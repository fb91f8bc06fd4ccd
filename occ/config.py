"""A verifier's configuration: which kind, which prompt template, how to train, how to set the threshold.

:class:`VerifierConfig` is the one description of a verifier to build. ``occ enroll``'s options map onto
it one to one (:meth:`VerifierConfig.from_options`), the Python API and ``bench/`` build it directly, and
:class:`occ.verifier.Verifier` stores it with the fitted state, so a saved verifier says exactly how it
was made. Every value is checked when the config is made: an unknown kind, loss or adversarial mode, a
template of the wrong kind, or a training option the kind does not use is a :class:`UsageError`.

:data:`KINDS` is the registry of verifier kinds (:class:`occ.heads.Head` subclasses): a new kind is one
class and one entry here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from occ.calibration import DEFAULT_FAR, DEFAULT_TARGET_TPR, check_far, check_tpr
from occ.errors import UsageError
from occ.evidence import DEFAULT_VIEWS
from occ.heads import Head
from occ.lda import LdaHead
from occ.probe import ProbeHead
from occ.prompts import PromptTemplate, TextPrompts, VisualPrompts
from occ.training import TrainSettings

KINDS: dict[str, type[Head]] = {cls.kind: cls for cls in (LdaHead, VisualPrompts, TextPrompts, ProbeHead)}
DEFAULT_METHOD = "lda"
METHODS = tuple(dict.fromkeys(cls.method for cls in KINDS.values()))
DEFAULT_FOLDS = 3
# Training settings a kind that does not train (``Head.trains`` False) still reads.
_ALWAYS_APPLY = ("seed",)


def kind_class(kind: str) -> type[Head]:
    try:
        return KINDS[kind]
    except KeyError:
        raise UsageError(f"unknown verifier kind {kind!r}; choose from {', '.join(KINDS)}") from None


def default_kind(backbone) -> str:
    """The prompt kind for ``backbone``: text prompts (OCC-CLIP) with a text tower, else visual prompts."""
    return "text" if backbone.has_text else "visual"


@dataclass(frozen=True)
class VerifierConfig:
    """Parameters of one verifier.

    ``kind``: a key of :data:`KINDS` (``"visual"``, ``"text"``, ``"probe"``); ``template``: a prompt
    template (name, JSON path or :class:`PromptTemplate`; defaults per kind; resolved when the config is
    made, so a verifier made from a JSON file reloads without it); ``settings``: training
    (:class:`occ.training.TrainSettings`); ``far`` and ``target_tpr``: the threshold rules (highest
    held-out false-accept rate, and the most of held-out target images to accept, see
    :mod:`occ.calibration`); ``folds``: cross-validation folds for the held-out scores.
    """

    kind: str = "lda"
    template: PromptTemplate | str | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)
    far: float = DEFAULT_FAR
    target_tpr: float = DEFAULT_TARGET_TPR
    folds: int = DEFAULT_FOLDS
    views: int | None = None

    def __post_init__(self):
        head = kind_class(self.kind)
        views = self.views
        if views is None:
            views = DEFAULT_VIEWS if head.stores_evidence else 0
        if type(views) is not int or views < 0:
            raise UsageError(f"views must be an integer >= 0, got {views!r}")
        if views and not head.stores_evidence:
            raise UsageError(f"verifier kind {self.kind!r} takes no laundered training views (only lda does)")
        object.__setattr__(self, "views", views)
        check_far(self.far)
        check_tpr(self.target_tpr)
        if type(self.folds) is not int or self.folds < 2:
            raise UsageError(f"folds must be an integer >= 2, got {self.folds!r}")
        if not isinstance(self.settings, TrainSettings):
            raise UsageError(f"settings must be a TrainSettings, not {type(self.settings).__name__}")
        template = self.template
        if head.template_kind is None:
            if template is not None:
                raise UsageError(f"verifier kind {self.kind!r} takes no prompt template")
        else:
            template = template if template is not None else head.default_template
            if not isinstance(template, PromptTemplate):
                template = PromptTemplate.load(str(template))
            if template.kind != head.template_kind:
                raise UsageError(f"prompt template {template.name!r} is a {template.kind} template; verifier kind "
                                 f"{self.kind!r} needs a {head.template_kind} template")
        object.__setattr__(self, "template", template)
        if not head.trains:
            unused = [f.name for f in dataclasses.fields(TrainSettings) if f.name not in _ALWAYS_APPLY
                      and getattr(self.settings, f.name) != getattr(TrainSettings(), f.name)]
            if unused:
                raise UsageError(f"verifier kind {self.kind!r} is fitted in closed form: training setting(s) "
                                 f"{', '.join(unused)} do not apply")

    @classmethod
    def from_options(cls, *, method: str | None = None, kind: str | None = None, template: str | None = None,
                     backbone=None, far: float = DEFAULT_FAR, target_tpr: float = DEFAULT_TARGET_TPR,
                     views: int | None = None, **settings) -> VerifierConfig:
        """The config ``occ enroll`` options describe, one option to one field. ``method`` names a family
        of kinds ("prompt", "probe"); ``kind`` picks one of that family (a prompt kind defaults to the
        template's kind, else :func:`default_kind` of ``backbone``: a backbone, or a function returning
        one, called only then); ``settings`` are :class:`TrainSettings` fields, None meaning "not given".
        Every value is checked before ``backbone`` is called."""
        method = DEFAULT_METHOD if method is None else method
        if method not in METHODS:
            raise UsageError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        family = [k for k, c in KINDS.items() if c.method == method]
        if kind is not None and kind not in family:
            raise UsageError(f"unknown {method} kind {kind!r}; choose from {', '.join(family)}")
        chosen = {k: v for k, v in settings.items() if v is not None}
        unknown = sorted(set(chosen) - {f.name for f in dataclasses.fields(TrainSettings)})
        if unknown:
            raise UsageError(f"unknown training setting(s): {', '.join(unknown)}")
        train = TrainSettings(**chosen)
        check_far(far)
        check_tpr(target_tpr)
        if template is not None:
            template = PromptTemplate.load(template)
        if kind is None and len(family) == 1:
            kind = family[0]
        elif kind is None and template is not None:
            kind = next((k for k in family if KINDS[k].template_kind == template.kind), None)
            if kind is None:
                raise UsageError(f"prompt template {template.name!r} is of kind {template.kind!r}, which no "
                                 f"{method} kind reads")
        elif kind is None:
            if backbone is None:
                raise UsageError(f"method {method!r} needs a kind ({', '.join(family)}) or a backbone to choose it")
            kind = default_kind(backbone() if callable(backbone) else backbone)
        return cls(kind=kind, template=template, settings=train, far=far, target_tpr=target_tpr, views=views)

    def with_settings(self, **changes) -> VerifierConfig:
        """This config with some training settings changed."""
        return dataclasses.replace(self, settings=dataclasses.replace(self.settings, **changes))

    @property
    def head_class(self) -> type[Head]:
        return KINDS[self.kind]

    def to_dict(self) -> dict:
        """The stored form (the keys that ``verifier.json`` has always had)."""
        return {"kind": self.kind, "template": self.template.to_dict() if self.template else None,
                "settings": self.settings.to_dict(), "folds": self.folds, "views": self.views}

    @classmethod
    def from_dict(cls, data: dict, calibration: dict) -> VerifierConfig:
        """Inverse of :meth:`to_dict`; the threshold rules are read from the stored calibration."""
        template = PromptTemplate(**data["template"]) if data["template"] is not None else None
        return cls(kind=data["kind"], template=template, settings=TrainSettings(**data["settings"]),
                   far=calibration["far"], target_tpr=calibration["target_tpr"], folds=data["folds"],
                   views=data.get("views", 0))
