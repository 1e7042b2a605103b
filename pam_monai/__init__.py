"""pam-monai: "Paying Attention to Mistakes" (FPA and RFNA, BMVC 2020) for MONAI.

Reference: Mou-Cheng Xu, Neil P. Oxtoby, Daniel C. Alexander, Joseph Jacob,
"Learning To Pay Attention To Mistakes", BMVC 2020. https://arxiv.org/abs/2007.15131
"""

__version__ = "0.1.0"
