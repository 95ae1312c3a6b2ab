"""ImageNet's classes, as the data code names them: the official ILSVRC-2012 class ids of the
synsets (training/imagenet_synsets.txt), and the multi-source study's similarity levels, ten class
ids each. dataset_tool.py selects and labels ImageNet images with them; training/study.py and
run_study.py choose a study's sources from the levels.
"""

import functools
import os

#----------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def synsets():
    """{synset: official ILSVRC-2012 class id}: the position in training/imagenet_synsets.txt."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), 'imagenet_synsets.txt')) as f:
        return {name: i for i, name in enumerate(f.read().split())}

#----------------------------------------------------------------------------
# The Multi-Source-GM study's similarity levels: ten class ids each, 171 (Italian greyhound, the
# source every level shares) first. The study's scripts call them sim3/sim2/sim1 (higher = more
# similar to 171), its Python code level1/level2/level3. Listed from the most to the least similar.

IMAGENET_LEVELS = {
    'sim3': [171, 182, 198, 208, 215, 231, 236, 244, 245, 258], # ten dog breeds
    'sim2': [171, 269, 279, 283, 294, 330, 340, 366, 370, 386], # mammals
    'sim1': [171, 1, 18, 31, 46, 532, 579, 609, 849, 980],      # diverse
}
LEVEL_ALIASES = {'level1': 'sim3', 'level2': 'sim2', 'level3': 'sim1'}

#----------------------------------------------------------------------------
