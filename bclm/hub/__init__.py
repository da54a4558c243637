"""Sharing on the Hugging Face Hub: policies (model repos with a model card) and trajectory datasets
(dataset repos whose configs and tags are DAgger rounds). Loading from a repo id is `Policy.from_pretrained`."""

from bclm.hub.cards import dataset_card, policy_card
from bclm.hub.policies import push_policy, stage_policy
from bclm.hub.trajectories import pull_dataset, push_dataset, stage_dataset
from bclm.hub.upload import UploadPlan

__all__ = ["UploadPlan", "dataset_card", "policy_card", "pull_dataset", "push_dataset", "push_policy",
           "stage_dataset", "stage_policy"]
