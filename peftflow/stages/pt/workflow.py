from peftflow.stages.workflow import Workflow

WORKFLOW = Workflow()  # the stock trainer learns every labelled token: a block's labels are its tokens
