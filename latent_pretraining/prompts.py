"""LAPA's prompt strings, shared by finetune preprocessing, labelling and the tabletop data."""

LAPA_QUESTION = "What action should the robot take to `{task}`"  # backticks included, as LAPA writes it
SYSTEM_PREFIX, SYSTEM_SUFFIX = "<s> You are a helpful assistant. USER: ", " ASSISTANT:"
# the ``fields`` of LAPA's rows: latent pretraining (``lam.label``), finetuning (``data.finetune_preprocess``)
LATENT_FIELDS = "[instruction],[vision],delta"
ACTION_FIELDS = "[instruction],[vision],action"


def wrap_question(question: str) -> str:
    """``<s> You are a helpful assistant. USER: <question> ASSISTANT:``"""
    return f"{SYSTEM_PREFIX}{question}{SYSTEM_SUFFIX}"


def lapa_instruction(task: str) -> str:
    """The full instruction LAPA's rows carry for a task description."""
    return wrap_question(LAPA_QUESTION.format(task=task))
