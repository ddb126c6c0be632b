"""Episodes (videos with optional instructions and actions) from every source on disk.

Readers, each returning ``list[Episode]``; ``open_episodes(kind, path, **options)`` dispatches:

    folder    image-sequence folders, or the tabletop export (``image_folders``)
    video     .mp4 .avi .mov .mkv .webm .gif files, decoded with PyAV (``video_files``)
    rlds      an RLDS / Open X-Embodiment dataset directory (``rlds_episodes``)
    jsonl     LAPA-style JSONL rows with image paths (``jsonl_frames``)
    tabletop  the export ``python -m data.make_tabletop --out DIR`` writes (``tabletop_export``)

Memory: folder and JSONL episodes read each frame from disk when asked; videos are decoded
whole on first use and kept in a small LRU of decoded files; RLDS episodes keep their frames
*encoded* (PNG/JPEG bytes) and decode one frame per call. ``EpisodeFrames`` is the flat view of
all frames the image tokenizer trains on; the latent action model pairs frames (``lam.data``).
"""

from latent_pretraining.episodes.base import IMAGE_SUFFIXES, Episode, load_image, natural_key, read_image
from latent_pretraining.episodes.folders import image_folders, tabletop_export
from latent_pretraining.episodes.jsonl import jsonl_frames
from latent_pretraining.episodes.rlds import rlds_episodes
from latent_pretraining.episodes.sources import SOURCE_KINDS, EpisodeFrames, check_source, open_episodes
from latent_pretraining.episodes.videos import VIDEO_SUFFIXES, video_files

__all__ = [
    "IMAGE_SUFFIXES",
    "SOURCE_KINDS",
    "VIDEO_SUFFIXES",
    "Episode",
    "EpisodeFrames",
    "check_source",
    "image_folders",
    "jsonl_frames",
    "load_image",
    "natural_key",
    "open_episodes",
    "read_image",
    "rlds_episodes",
    "tabletop_export",
    "video_files",
]
