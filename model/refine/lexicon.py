"""Words for findings, locations and severities, and the NegEx trigger lists.

Each label has regular expressions for the ways radiologists name it ("blunting of the
costophrenic angle" is an effusion, "pulmonary vascular congestion" is edema, "PICC line" is a
support device, "nodular opacity" is a lesion). Patterns are matched on lower-cased text.
Tuned on the IU-Xray dev fold only (ids with id % 5 != 0).
"""

from __future__ import annotations

import re

_CARDIAC = r"(?:heart|cardiac (?:silhouette|shadow|size|contour)|heart size|cardiac)"
_ENLARGED = r"(?:enlarged|enlargement|large|prominent|increased|borderline)"
_LUNG_PLACE_AFTER = (
    r"[^.;]*\b(?:lungs?|lobes?|bases?|basilar|bibasilar|apex|apices|apical|midlung|lingula\w*|retrocardiac|"
    r"costophrenic|perihilar|parenchym\w*|zones?|air ?space)\b"
)

FINDING_PATTERNS: dict[str, list[str]] = {
    "Cardiomegaly": [
        r"cardiomegaly",
        rf"{_ENLARGED} (?:in size )?(?:of the )?{_CARDIAC}",
        rf"{_CARDIAC}(?: size)?(?: (?:is|are|appears?|remains?|which is|seems?))?(?: (?:again|now|still|stably|"
        rf"also))?(?: (?:mildly|moderately|markedly|severely|slightly|minimally|significantly|borderline|"
        rf"at the))?(?: borderline(?: to (?:mildly )?enlarged)?| {_ENLARGED})",
        r"cardiac enlargement",
        # "heart size XXXX mildly enlarged", "heart size is persistently enlarged": up to three
        # words between, none of them a negation (that would hide inside the mention).
        rf"{_CARDIAC}(?: size)?(?: (?!not\b|no\b|normal\b|within\b|upper\b)[\w-]+){{1,3}} (?:enlarged|large)\b",
        r"increase in (?:the )?(?:heart|cardiac) size",
    ],
    "Enlarged Cardiomediastinum": [
        r"(?:widened|widening of the|enlarged|prominent|prominence of the) (?:\w+ ){0,3}(?:superior |"
        r"upper )?mediastin\w*",
        r"mediastin\w* (?:silhouette |contours? )?(?:is |are |appears? )?(?:mildly |slightly |"
        r"markedly )?(?:widen\w*|enlarged|prominent)",
        r"enlarged cardiomediastin\w*",  # the canonical label name itself
    ],
    "Lung Opacity": [
        r"(?<!nodular )(?<!calcified )(?<!round )opaci\w*",
        r"air ?space (?:disease|process|opacit\w*)",
        r"infiltrat\w*",
        # "density" alone names anything radio-opaque (hernia, breast, sternum, vessels): it is
        # a lung opacity only with a lung place or an airspace word in the same sentence.
        r"(?<!bone )(?<!osseous )(?<!soft tissue )(?<!calcified )(?<!calcific )(?<!nodular )(?<!round )"
        rf"(?<!breast )(?<!nipple )densit(?:y|"
        rf"ies)(?={_LUNG_PLACE_AFTER})",
        r"(?:air ?space|parenchymal|pulmonary|lung|basilar|bibasilar|perihilar|retrocardiac|apical|patchy|hazy|"
        r"streaky|confluent|reticular|interstitial|alveolar) densit(?:y|ies)",
        r"haziness|hazy",
        r"ground[- ]glass",
    ],
    "Lung Lesion": [
        r"(?<!calcified )(?<!calcific )(?<!granulomatous )nodul\w*(?! granuloma)(?! soft tissue)(?! contour)",
        r"(?:nodular|round|rounded) (?:opacit\w*|densit\w*)",
        r"\bmass(?:es)?\b",
        r"(?<!bone )(?<!bony )(?<!rib )(?<!osseous )(?<!lytic )(?<!sclerotic )(?<!expansile )(?<!skin )\blesions?\b",
        r"neoplasm|tumou?r|malignan\w*|carcinoma",
    ],
    "Edema": [
        r"edema",
        # "interstitial prominence" is curated as a marking pattern, not edema.
        r"(?:vascular|venous|pulmonary) (?:congestion|engorgement|prominence|redistribution|indistinctness)",
        r"interstitial congestion",
        r"\bengorged\b|indistinct (?:pulmonary )?vascula\w*|vascular (?:margination|markings) (?:is |are )?indistinct",
        r"\bcongestion\b",
        r"kerley",
        r"cephaliz\w*",
        r"fluid overload",
    ],
    "Consolidation": [r"consolidat\w*"],
    # "infection" alone is an interpretation IU-Xray's curators rarely tag as pneumonia.
    "Pneumonia": [r"pneumoni\w*", r"bronchopneumonia"],
    "Atelectasis": [r"atelecta\w*", r"plate[- ]?like", r"discoid", r"(?:lobar|lobe|segmental) collapse"],
    "Pneumothorax": [r"pneumothora\w*", r"\bptx\b"],
    "Pleural Effusion": [
        r"(?<!pericardial )effusions?",
        r"pleural fluid",
        r"blunt\w* (?:of )?(?:the )?(?:right |left |bilateral |both |lateral |posterior )*costophrenic",
        r"costophrenic (?:angles?|recess\w*|sulc\w*|xxxx) (?:is |are |remains? )?(?:\w+ )?blunt\w*",
    ],
    "Pleural Other": [
        r"pleural (?:thickening|plaques?)",
        r"(?:apical|biapical) (?:pleural )?(?:cap|caps|thickening)",
        r"pleural[- ]parenchymal thickening",
        r"fibrothorax",
        r"pleural other",  # the canonical label name itself
    ],
    # Not a broken device: "catheter fracture", "fractured lead".
    "Fracture": [
        r"(?<!catheter )(?<!lead )(?<!wire )(?<!line )fracture(?!d (?:\w+ ){0,3}(?:leads?|wires?|xxxx|catheter))\w*",
        r"\bfx\b",
    ],
    "Support Devices": [
        r"support devices?",  # the canonical label name itself
        r"\bpicc\b",
        r"central (?:venous )?(?:line|catheter)",
        r"(?:venous|dialysis|swan[- ]ganz|pulmonary artery|internal jugular|subclavian|ij|"
        r"indwelling) (?:catheter|line)s?",
        r"\bcatheters?\b",
        r"port[- ]?a[- ]?cath|mediport|power ?port|(?:chest|subcutaneous|venous) port",
        r"pacemaker|\bpacer\b|defibrillator|\baicd\b|\bicd\b|loop recorder",
        r"(?:endotracheal|\bet\b|nasogastric|\bng\b|orogastric|\bog\b|feeding|chest|tracheostomy|enteric|"
        r"dobhoff|gastric|gastrostomy) tubes?",
        r"tracheostomy",
        r"(?:prosthetic|mechanical|replaced) (?:aortic |mitral |tricuspid |pulmonic )?valves?|"
        r"valve (?:replacement|prosthesis)",
        r"\bdevices?\b|prosthe(?:sis|ses|tic)",
        r"pacing leads?|lines and tubes|tubes and lines|stimulator|bone anchors?|internal fixation|"
        r"implantable cardiac|cardiac xxxx (?:in|is|and|with)",
        r"with (?:its |the )?(?:distal )?tips?\b",
        r"\b(?:pacer|pacemaker|icd|cardiac|transvenous|monitor|monitoring|ecg|ekg|external) leads?\b",
        r"(?:chest|subclavian|jugular|\bij) xxxx(?: \w+)?(?: with (?:its |the )?(?:distal )?tip| tip)|"
        r"\bxxxx tips?\b|\btip (?:projects|overlies|is|in|at|terminates|overlying|projecting)",
        r"cardiac xxxx(?: and| with)? leads?|\bgenerator\b|\bleads? (?:terminat|overl|project|in the right)",
    ],
}

FINDING_REGEX: dict[str, re.Pattern] = {
    label: re.compile("|".join(f"(?:{p})" for p in pats)) for label, pats in FINDING_PATTERNS.items()
}

# Phrases that state a normal study: "No Finding" when nothing else is present.
NORMAL_REGEX = re.compile(
    r"\bnormal (?:chest|study|exam\w*|radiograph\w*|x-?ray)\b|no acute (?:cardiopulmonary|pulmonary|disease|"
    r"abnormalit|process|findings?)|"
    r"no (?:active |acute )?disease|\bhealthy\b|\bnormal (?:lungs|heart)\b|\bno findings?\b|\bnormal\b$|"
    r"^normal\b|\bunremarkable chest\b|lungs (?:are )?clear"
)

SIDE_WORDS = [
    (
        re.compile(r"\b(?:bilateral\w*|both|bibasilar|bibasal|biapical|bilaterally|right and left|left and right)\b"),
        "bilateral",
    ),
    # "right atrium", "left ventricle": heart chambers, not sides of the chest.
    (re.compile(r"\b(?:right|rt)\b(?!(?: \w+)? (?:atri|ventric|heart))"), "right"),
    (re.compile(r"\b(?:left|lt)\b(?!(?: \w+)? (?:atri|ventric|heart))|lingula\w*"), "left"),
]
# With no side named, plurals of paired places mean both sides ("basilar opacities",
# "effusions", "throughout the lungs", "the lower lobes").
IMPLICIT_BILATERAL = re.compile(
    r"\b(?:lungs|lobes|bases|apices|hila|zones|effusions|lung fields|basilar|diffuse\w*|throughout)\b"
)
ZONE_WORDS = [
    (re.compile(r"\b(?:apex|apices|apical|biapical)\b"), "apical"),
    (re.compile(r"\bupper (?:lobes?|zones?|lungs?|lung zones?)\b"), "upper"),
    (re.compile(r"\b(?:mid|middle) ?(?:lobes?|zones?|lungs?|lung zones?)\b|\blingula\w*\b|\bmidlung\b"), "middle"),
    (re.compile(r"\blower (?:lobes?|zones?|lungs?|lung zones?)\b"), "lower"),
    (re.compile(r"\b(?:bases?|basilar|basal|bibasilar|bibasal|retrocardiac|costophrenic)\b"), "basal"),
    (re.compile(r"\b(?:perihilar|hilar|hila|hilum)\b"), "perihilar"),
]
# A zone word right before the finding's name: "right lower consolidation", the canonical condition
# form (`condition.condition_text`), which must read back as itself; reports say "lower zone".
ZONE_BEFORE_FINDING = re.compile(r"\b(upper|mid|middle|lower) +$")
# Severity words -> the output scale (mild, small, moderate, large, severe).
SEVERITY_WORDS = [
    (re.compile(r"\b(?:nondisplaced|non-displaced|undisplaced)\b"), "mild"),
    (re.compile(r"\b(?:massive|large|larger|sizable|big|tension)\b"), "large"),
    (
        re.compile(
            r"\b(?:severe|severely|marked|markedly|extensive|significant|significantly|dense|"
            r"(?<!non-)(?<!non)(?<!mildly )(?<!minimally )(?<!moderately )displaced)\b"
        ),
        "severe",
    ),
    (re.compile(r"\b(?:moderate|moderately|moderate-sized|moderate-size)\b"), "moderate"),
    (re.compile(r"\b(?:small|smaller|tiny|trace)\b"), "small"),
    (
        re.compile(
            r"\b(?:mild|mildly|minimal|minimally|slight|slightly|borderline|subtle|faint|minor|top[- ]normal|"
            r"upper limits? of normal)\b"
        ),
        "mild",
    ),
]

# NegEx-style triggers (Chapman et al. 2001), extended with radiology phrasing.
PRE_NEGATION = re.compile(
    r"\b(?:no|not|without|negative for|free of|clear of|absence of|absent|resolution of|resolved|removal of|"
    r"no evidence of|no signs? of|no xxxx of|no findings? of|no radiographic evidence of|rules? out|ruled out|"
    r"there is no|there are no|never|nor|interval removal of|no longer|remove|removed|take away|get rid of|minus|"
    r"instead of|clearing of|clear(?= air ?space))\b"
)
POST_NEGATION = re.compile(
    r"^\W*(?:(?:is|are|has|have|was|were|may|might)\s+)?(?:been\s+)?(?:not\s+(?:be\s+)?(?:definitely\s+|"
    r"clearly\s+|well[\s-]+)?(?:seen|identified|present|visualized|evident|demonstrated|appreciated|noted)|"
    r"absent|resolved|removed|cleared|no longer (?:seen|present|visualized)|negative|gone|"
    r"(?:appears?\s+|is\s+|are\s+)?(?:within\s+(?:the\s+)?(?:limits\s+of\s+)?normal(?:\s+limits)?|normal|"
    r"unremarkable))\b"
)
# "the previously seen right upper lobe mass lesion is not seen": a post-trigger a few words
# on, with no punctuation between (only the "not seen" family; "normal" there means another organ).
POST_NEGATION_FAR = re.compile(
    r"^[a-z0-9 -]{0,40}?\b(?:is|are|was|were)\s+(?:not|no longer)\s+(?:definitely\s+|clearly\s+|well[\s-]+)?"
    r"(?:seen|identified|visualized|evident|demonstrated|appreciated)\b"
)
PRE_UNCERTAIN = re.compile(
    r"\b(?:possible|possibly|questionable|question of|may represent|may be|may reflect|could be|could represent|"
    r"cannot exclude|can not exclude|cannot rule out|not excluded|cannot be excluded|suspicious for|suspected|"
    r"concern for|concerning for|equivocal|differential|or early|might|uncertain|indeterminate|"
    r"could (?:obscure|hide|mask)|(?:could|may|might) indicate|favou?r\w*|exclude|to exclude|evaluate for|"
    r"evaluation of|evaluation for|could reflect|reflect|suggestive of|suggesting|suggests)\b"
)
POST_UNCERTAIN = re.compile(
    r"^\W*(?:(?:is|are)\s+)?(?:(?:not|cannot be|can not be|can't be) (?:excluded|ruled out)|possible|"
    r"questioned|suspected|"
    r"not entirely excluded|is in the differential|(?:would be )?a consideration|(?:is|are) not excluded|"
    r"could be considered)\b"
)
# Words that close a negation scope: what follows is a new statement.
TERMINATION = re.compile(
    r"\b(?:but|however|although|though|except|aside from|apart from|which|otherwise|there is|there are|"
    r"there has been|with|has developed|developing)\b"
)

# NegEx pseudo-triggers: "no change in the effusion" says the effusion is still there.
PSEUDO_NEGATION = re.compile(
    r"\b(?:no|without) (?:significant |definite |substantial |appreciable |interval |xxxx )*(?:change|increase|"
    r"worsening|improvement)\b"
)
