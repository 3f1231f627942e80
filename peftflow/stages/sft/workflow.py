from peftflow.stages.workflow import Workflow

WORKFLOW = Workflow()  # sft is what the shared pipeline does
