from jobs.cli import main
from jobs.common import exit_process

exit_process(main())
