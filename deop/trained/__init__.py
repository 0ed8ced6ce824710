"""The paper's own trained model (DeOP, ICCV 2023), rebuilt in plain PyTorch from the released weights.

``generator``: the MaskFormer mask generator (100 query masks per image); ``checkpoint``: the released
``model_final.pth``, fetched or placed by hand, checked strictly, converted once to safetensors;
``keymap``: detectron2's parameter names to ours, part by part; ``model_final_keys.txt``: every tensor of
the released checkpoint with its shape, read from the official code (its header cites the lines).
Importing this package imports no torch.
"""
